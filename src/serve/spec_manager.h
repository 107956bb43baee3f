// Speculative inference with token tree verification (SpecInfer), for requests of one LLM
// with one or more SSMs. Work proceeds in rounds over all running requests:
//   draft depth 0 .. D-1: each SSM runs one step (all SSMs concurrently). Depth 0 brings the
//     SSM's cache up to the request's committed text plus its pending token and proposes
//     the depth-1 nodes; depth d extends the SSM's own tree by one level (beam search by path
//     probability, the width schedule of TreeShape).
//   verify: the SSM trees are merged into one tree per request and the LLM runs one step
//     over each request's pending token plus its tree (tree attention), accepts the longest
//     path agreeing with its own choices, emits it plus a bonus token, and moves the accepted
//     tokens' K/V to their final cache positions (applied at the start of the next LLM step).
// Requests still prefilling share the same steps (as chunks). SSM caches are brought up to
// date at the next depth-0 step by re-reading the accepted tokens; nothing moves there.
#pragma once
#include <map>
#include <vector>

#include "serve/sampling.h"

#include "serve/request_manager.h"
#include "serve/token_tree.h"

namespace ffspec {

struct SpecModel {
  int model_id;
  ServeLimits limits;
};

class SpecManager : public RequestManager {
 public:
  // limits: the LLM's; requests also respect each SSM's max_seq_length / slots.
  SpecManager(SpecModel llm, std::vector<SpecModel> ssms, TreeShape shape, std::function<void()> on_new_work);

  std::vector<StepBatch> next_steps() override;
  void update(const std::vector<StepBatch> &batches, const std::vector<StepResult> &results) override;
  void fail_steps(const std::vector<StepBatch> &batches, const std::string &why) override;
  std::vector<int> model_ids() const override;

 private:
  struct Round {
    bool spec = false;  // gets a tree this round
    int L = 0;          // cache position of the pending token
    int depth_limit = 0;
    int room = 0;       // tree nodes that fit
    bool sampling = false;  // drafts are drawn from q and verified by MSS
    std::vector<TokenTree> trees;           // per SSM
    std::vector<std::vector<int>> frontier; // per SSM: nodes to expand next (-1 = root)
    TokenTree merged;
    // Sampling: per SSM, q at each drafted node (-1 = root) and the children drawn there in
    // draw order (repeats kept: each is one attempt); where[s][j] = merged index.
    std::vector<std::map<int, std::vector<double>>> q;
    std::vector<std::map<int, std::vector<int>>> draws;
    std::vector<std::vector<int>> where;
  };
  // One entry per request in a batch: how many of its tokens are plain (committed) tokens,
  // which rows are its, and (verify) how many tree nodes follow.
  struct Entry {
    uint64_t guid;
    int num_plain;
    int first_row;
    int num_rows;
    int tree_nodes;
  };

  std::vector<StepBatch> draft_steps_locked();
  StepBatch verify_step_locked();
  void start_round_locked();
  void plan_budget_locked();
  void update_draft_locked(const std::vector<StepBatch> &batches, const std::vector<StepResult> &results);
  void update_verify_locked(const StepBatch &batch, const StepResult &result);
  void draft_sampled_locked(Request &r, Round &rd, int s, int depth, const std::vector<const float *> &rows);
  double next_uniform_locked(Request &r);
  // Emits a verdict's tokens (stopping at EOS / limits) and queues the K/V moves of its
  // accepted tree tokens, whose pending token sat at cache position L.
  void commit_verdict_locked(Request &r, int L, const Verdict &v);
  void adapt_depth_locked(Request &r, const Round &rd, const Verdict &v);

  SpecModel llm_;
  std::vector<SpecModel> ssms_;
  TreeShape shape_;
  bool drafting_ = false;  // inside a round's draft phase
  int depth_ = 0;          // draft step within the round
  std::map<uint64_t, Round> round_;
  std::vector<std::vector<Entry>> entries_;  // per batch in flight
  std::vector<int> batch_ssm_;               // per batch in flight: SSM index, -1 = the LLM
  std::map<int, std::vector<KvMove>> commits_;  // per slot, for the next LLM step
};

}  // namespace ffspec
