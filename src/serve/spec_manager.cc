#include "serve/spec_manager.h"

#include <algorithm>
#include <climits>
#include <cmath>

#include "util/error.h"
#include "util/log.h"

namespace ffspec {

namespace {

ServeLimits combined(const SpecModel &llm, const std::vector<SpecModel> &ssms) {
  ServeLimits l = llm.limits;
  for (const SpecModel &s : ssms) {
    l.max_requests_per_batch = std::min(l.max_requests_per_batch, s.limits.max_requests_per_batch);
    l.max_seq_length = std::min(l.max_seq_length, s.limits.max_seq_length);
  }
  return l;
}

void push_plain(StepBatch &b, int32_t tok, int pos, int slot) {
  b.tokens.push_back(tok);
  b.positions.push_back(pos);
  b.slots.push_back(slot);
  b.cache_pos.push_back(pos);
  b.prefix_len.push_back(pos + 1);
  b.tree_base.push_back(0);
  b.tree_mask.push_back(0);
}

void push_tree(StepBatch &b, const TokenTree &t, int j, int L, int slot) {
  const TreeNode &n = t.nodes()[j];
  b.tokens.push_back(n.token);
  b.positions.push_back(L + n.depth);
  b.slots.push_back(slot);
  b.cache_pos.push_back(L + 1 + j);
  b.prefix_len.push_back(L + 1);
  b.tree_base.push_back(L + 1);
  b.tree_mask.push_back(t.path_mask(j));
}

void add_row(StepBatch &b, const SampleSpec &s) {
  b.logit_rows.push_back(static_cast<int32_t>(b.tokens.size()) - 1);
  b.samples.push_back(s);
}

}  // namespace

SpecManager::SpecManager(SpecModel llm, std::vector<SpecModel> ssms, TreeShape shape,
                         std::function<void()> on_new_work)
    : RequestManager(llm.model_id, combined(llm, ssms), std::move(on_new_work)),
      llm_(llm),
      ssms_(std::move(ssms)),
      shape_(std::move(shape)) {
  shape_.max_tree_tokens = std::min(shape_.max_tree_tokens, kMaxTreeTokens);
}

void SpecManager::start_round_locked() {
  admit_locked();
  round_.clear();
  const int nssm = static_cast<int>(ssms_.size());
  for (uint64_t g : running_) {
    Request &r = requests_.at(g);
    if (static_cast<int>(r.ssm_computed.size()) != nssm) r.ssm_computed.assign(nssm, 0);
    Round rd;
    rd.L = r.num_computed;
    const int pending = static_cast<int>(r.tokens.size()) - r.num_computed;
    // Tokens this round may still emit: the tree's depth is one less (the bonus token).
    long remaining = INT_MAX;
    if (r.params.max_new_tokens >= 0) remaining = std::min<long>(remaining, r.params.max_new_tokens - r.num_generated());
    if (r.params.max_length >= 0) remaining = std::min<long>(remaining, r.params.max_length - (long)r.tokens.size());
    const int depth = shape_.adaptive_depth && r.spec_depth > 0 ? std::min(r.spec_depth, shape_.max_depth)
                                                                 : shape_.max_depth;
    rd.depth_limit = static_cast<int>(std::min<long>(depth, remaining - 1));
    // Tree slots sit after the pending token in every model's cache.
    rd.room = std::min(shape_.max_tree_tokens, limits_.max_seq_length - 1 - rd.L);
    rd.sampling = r.params.do_sample;
    // Sampled drafts may not be pruned by value (that would bias them): each SSM gets an
    // equal share of the room, so their union always fits.
    if (rd.sampling) rd.room = rd.room / std::max(1, nssm) * nssm;
    rd.spec = pending == 1 && nssm > 0 && rd.depth_limit > 0 && rd.room >= nssm;
    rd.trees.assign(nssm, TokenTree());
    rd.frontier.assign(nssm, std::vector<int>());
    rd.q.assign(nssm, {});
    rd.draws.assign(nssm, {});
    round_[g] = std::move(rd);
  }
  plan_budget_locked();
  drafting_ = true;
  depth_ = 0;
}

void SpecManager::plan_budget_locked() {
  // The verify step's tokens, planned before anything is drafted (so never from drafted
  // values: pruning sampled drafts by value would bias the verifier): one token per decoding
  // request, a quarter kept for prefill chunks when some prompt is still being read, and the
  // rest shared evenly as tree room.
  const int budget = llm_.limits.max_tokens_per_batch, nssm = static_cast<int>(ssms_.size());
  int decoding = 0, prefilling = 0, nspec = 0;
  for (uint64_t g : running_) {
    const Request &r = requests_.at(g);
    const int pending = static_cast<int>(r.tokens.size()) - r.num_computed;
    decoding += pending == 1;
    prefilling += pending > 1;
    nspec += round_.at(g).spec;
  }
  int free = budget - decoding;
  if (prefilling > 0) free -= std::min(std::max(free, 0), std::max(1, budget / 4));
  for (uint64_t g : running_) {
    Round &rd = round_.at(g);
    if (!rd.spec) continue;
    const int share = nspec > 0 ? std::max(free, 0) / nspec : 0;
    nspec--;
    int room = std::min(rd.room, share);
    if (rd.sampling) room = room / nssm * nssm;
    if (room < (rd.sampling ? nssm : 1)) {
      rd.spec = false;
      continue;
    }
    rd.room = room;
    free -= room;
  }
}

std::vector<StepBatch> SpecManager::draft_steps_locked() {
  std::vector<StepBatch> out;
  entries_.clear();
  batch_ssm_.clear();
  for (int s = 0; s < static_cast<int>(ssms_.size()); s++) {
    const SpecModel &m = ssms_[s];
    StepBatch b;
    b.model_id = m.model_id;
    std::vector<Entry> entries;
    int budget = m.limits.max_tokens_per_batch;
    for (uint64_t g : running_) {
      Request &r = requests_.at(g);
      Round &rd = round_.at(g);
      const int first_row = static_cast<int>(b.num_rows());
      if (depth_ == 0) {
        // Catch up with the committed text; a proposing step also reads the pending token
        // and proposes depth 1 from its logits. Otherwise the last token waits for that step.
        const int total = static_cast<int>(r.tokens.size());
        // A proposing step needs the pending token's logits: re-read it if already cached.
        const int have = rd.spec ? std::min(r.ssm_computed[s], total - 1) : r.ssm_computed[s];
        const int n = std::min(rd.spec ? total - have : total - 1 - have, budget);
        if (n <= 0) continue;
        for (int i = 0; i < n; i++) push_plain(b, r.tokens[have + i], have + i, r.slot);
        budget -= n;
        const bool proposes = rd.spec && have + n == total;
        if (proposes) {
          SampleSpec sp;
          if (rd.sampling)
            sp.want_logits = 1;  // q itself: the manager draws the children
          else
            sp.num_topk = shape_.width_at(1);
          add_row(b, sp);
          rd.frontier[s] = {-1};
        }
        entries.push_back({g, n, first_row, proposes ? 1 : 0, 0});
      } else {
        if (!rd.spec || rd.frontier[s].empty() || depth_ >= rd.depth_limit) continue;
        const std::vector<int> &fr = rd.frontier[s];
        if (static_cast<int>(fr.size()) > budget) {
          rd.frontier[s].clear();  // no room this step: this SSM's tree stops here
          continue;
        }
        for (int j : fr) {
          push_tree(b, rd.trees[s], j, rd.L, r.slot);
          SampleSpec sp;
          if (rd.sampling)
            sp.want_logits = 1;
          else
            sp.num_topk = shape_.width_at(depth_ + 1);
          add_row(b, sp);
        }
        budget -= static_cast<int>(fr.size());
        entries.push_back({g, 0, first_row, static_cast<int>(fr.size()), 0});
      }
    }
    if (b.num_tokens() == 0) continue;
    out.push_back(std::move(b));
    entries_.push_back(std::move(entries));
    batch_ssm_.push_back(s);
  }
  return out;
}

StepBatch SpecManager::verify_step_locked() {
  StepBatch b;
  b.model_id = llm_.model_id;
  entries_.assign(1, {});
  batch_ssm_.assign(1, -1);
  int budget = llm_.limits.max_tokens_per_batch;
  // Decoding requests (pending token + tree) first, then prefill chunks.
  for (int pass = 0; pass < 2; pass++) {
    for (uint64_t g : running_) {
      Request &r = requests_.at(g);
      Round &rd = round_.at(g);
      const int pending = static_cast<int>(r.tokens.size()) - r.num_computed;
      if ((pending == 1) != (pass == 0) || pending <= 0 || budget <= 0) continue;
      const int first_row = static_cast<int>(b.num_rows());
      if (pass == 0) {
        if (rd.spec && rd.sampling) {
          rd.merged = merge_trees(rd.trees, rd.room, &rd.where);
          // The plan made room for it; dropping drafts by value here would bias the verifier.
          if (rd.merged.size() + 1 > budget) {
            FFS_WARN("spec", "verify budget short of its plan; request decodes without speculation");
            rd.spec = false;
          }
        } else if (rd.spec) {
          rd.merged = merge_trees(rd.trees, rd.room);
          rd.merged.truncate(budget - 1);
        }
        // No SSM proposed anything (e.g. its token budget went to prefill): a plain step.
        if (rd.spec && rd.merged.empty()) rd.spec = false;
        push_plain(b, r.tokens[r.num_computed], r.num_computed, r.slot);
        SampleSpec sp = sample_spec(r);
        if (rd.spec) {
          sp.do_sample = 0;
          sp.want_logits = rd.sampling;  // p for the verifier
        }
        add_row(b, sp);
        const int nt = rd.spec ? rd.merged.size() : 0;
        for (int j = 0; j < nt; j++) {
          push_tree(b, rd.merged, j, rd.L, r.slot);
          add_row(b, sp);
        }
        budget -= 1 + nt;
        entries_[0].push_back({g, 1, first_row, 1 + nt, nt});
      } else {
        // The prompt's last token stays pending: the next round speculates from it, so even
        // the first generated token comes from a verified tree.
        const int n = std::min(pending - 1, budget);
        for (int i = 0; i < n; i++) push_plain(b, r.tokens[r.num_computed + i], r.num_computed + i, r.slot);
        budget -= n;
        entries_[0].push_back({g, n, first_row, 0, 0});
      }
      auto it = commits_.find(r.slot);
      if (it != commits_.end()) {
        b.commits.insert(b.commits.end(), it->second.begin(), it->second.end());
        commits_.erase(it);
      }
    }
  }
  return b;
}

std::vector<int> SpecManager::model_ids() const {
  std::vector<int> ids{llm_.model_id};
  for (const SpecModel &s : ssms_) ids.push_back(s.model_id);
  return ids;
}

std::vector<StepBatch> SpecManager::next_steps() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!drafting_) start_round_locked();
  while (drafting_) {
    std::vector<StepBatch> steps = draft_steps_locked();
    if (!steps.empty()) return steps;
    drafting_ = false;  // nothing (more) to draft: verify
  }
  StepBatch b = verify_step_locked();
  if (b.num_tokens() == 0) {
    entries_.clear();
    return {};
  }
  return {std::move(b)};
}

void SpecManager::update_draft_locked(const std::vector<StepBatch> &batches, const std::vector<StepResult> &results) {
  for (size_t bi = 0; bi < batches.size(); bi++) {
    const int s = batch_ssm_[bi];
    const StepResult &res = results[bi];
    size_t topk_at = 0, logits_at = 0;
    int row = 0;
    const size_t V = static_cast<size_t>(limits_.vocab_size);
    for (const Entry &e : entries_[bi]) {
      Request &r = requests_.at(e.guid);
      Round &rd = round_.at(e.guid);
      r.ssm_computed[s] += e.num_plain;
      if (rd.sampling && e.num_rows > 0) {
        std::vector<const float *> rows;
        for (int k = 0; k < e.num_rows; k++, row++, logits_at++) rows.push_back(res.logits.data() + logits_at * V);
        draft_sampled_locked(r, rd, s, depth_ + 1, rows);
        continue;
      }
      std::vector<std::vector<Candidate>> cands;
      for (int k = 0; k < e.num_rows; k++, row++) {
        const int K = batches[bi].samples[row].num_topk;
        std::vector<Candidate> c;
        for (int i = 0; i < K; i++) c.push_back({res.topk_tokens.at(topk_at + i), res.topk_probs.at(topk_at + i)});
        topk_at += K;
        cands.push_back(std::move(c));
      }
      if (e.num_rows == 0) continue;
      const int depth = depth_ + 1;  // depth of the nodes proposed now
      const int room = rd.room - rd.trees[s].size();
      rd.frontier[s] = expand_beam(rd.trees[s], rd.frontier[s], cands, shape_.width_at(depth), depth, s, room);
    }
  }
  depth_++;
}

double SpecManager::next_uniform_locked(Request &r) {
  // A stream of its own, apart from the counter incremental sampling uses.
  return uniform01(r.params.seed ^ 0x5DEECE66DA3F1B2Bull, r.spec_draws++);
}

void SpecManager::draft_sampled_locked(Request &r, Round &rd, int s, int depth, const std::vector<const float *> &rows) {
  // rows[i]: the SSM's logits after frontier node i. Each frontier node draws an equal share
  // of this depth's width, i.i.d. from q; the count never depends on the drawn values.
  const std::vector<int> fr = rd.frontier[s];
  const int width = shape_.width_at(depth);
  const int per_node = (width + static_cast<int>(fr.size()) - 1) / static_cast<int>(fr.size());
  const int room = rd.room / static_cast<int>(ssms_.size());
  std::vector<int> next;
  for (size_t i = 0; i < fr.size(); i++) {
    // A row with NaN or +inf proposes nothing: the LLM then samples that node's successor from
    // its own distribution (no attempts there), so its output distribution is unchanged.
    if (!finite_row(rows[i], limits_.vocab_size)) continue;
    std::vector<double> q = warped_probs(rows[i], limits_.vocab_size, r.params.temperature, r.params.topp,
                                         r.params.topk);
    for (int k = 0; k < per_node && rd.trees[s].size() < room; k++) {
      const int32_t x = draw_from(q, next_uniform_locked(r));
      TreeNode n;
      n.token = x;
      n.parent = fr[i];
      n.depth = depth;
      n.prob = static_cast<float>(q[x]);
      n.logp = (fr[i] >= 0 ? rd.trees[s].nodes()[fr[i]].logp : 0.0) + std::log(q[x]);
      n.ssm = s;
      const int before = rd.trees[s].size();
      const int j = rd.trees[s].add(n);
      if (j == before) next.push_back(j);
      rd.draws[s][fr[i]].push_back(j);
    }
    rd.q[s][fr[i]] = std::move(q);
  }
  rd.frontier[s] = next;
}

void SpecManager::update_verify_locked(const StepBatch &, const StepResult &res) {
  size_t logits_at = 0;
  const size_t V = static_cast<size_t>(limits_.vocab_size);
  for (const Entry &e : entries_[0]) {
    Request &r = requests_.at(e.guid);
    Round &rd = round_.at(e.guid);
    const int L = r.num_computed;
    r.num_computed += e.num_plain;
    if (e.num_rows == 0) continue;
    if (e.tree_nodes > 0 && rd.sampling) {
      // p after the root and after each node, warped like the request's own sampling.
      std::vector<std::vector<double>> p;
      for (int k = 0; k < e.num_rows; k++, logits_at++) {
        const float *row = res.logits.data() + logits_at * V;
        // Left empty when the row holds NaN or +inf: verify_sampling emits kNonFiniteToken
        // if it reaches that node, and the request fails saying why.
        p.push_back(finite_row(row, limits_.vocab_size) ? warped_probs(row, limits_.vocab_size, r.params.temperature,
                                                                       r.params.topp, r.params.topk)
                                                        : std::vector<double>());
      }
      // Each SSM's draws at each node, mapped into the merged tree, SSM by SSM.
      std::vector<std::vector<Attempt>> attempts(1 + rd.merged.size());
      std::vector<std::vector<int>> source(ssms_.size(), std::vector<int>(1 + rd.merged.size(), -2));
      for (size_t s = 0; s < ssms_.size(); s++) {
        source[s][0] = -1;
        for (int j = 0; j < rd.trees[s].size(); j++)
          if (rd.where[s][j] >= 0) source[s][1 + rd.where[s][j]] = j;
      }
      for (int u = -1; u < rd.merged.size(); u++)
        for (size_t s = 0; s < ssms_.size(); s++) {
          const int src = source[s][u + 1];
          if (src == -2) continue;
          auto it = rd.draws[s].find(src);
          if (it == rd.draws[s].end()) continue;
          for (int c : it->second)
            if (rd.where[s][c] >= 0) attempts[u + 1].push_back({rd.where[s][c], &rd.q[s].at(src)});
        }
      Verdict v = verify_sampling(rd.merged, attempts, p, [&] { return next_uniform_locked(r); }, shape_.verifier);
      adapt_depth_locked(r, rd, v);
      commit_verdict_locked(r, L, v);
      continue;
    }
    std::vector<int32_t> choice(res.tokens.begin() + e.first_row, res.tokens.begin() + e.first_row + e.num_rows);
    if (e.tree_nodes == 0) {
      Verdict plain;  // no tree: the LLM's own token
      plain.emitted = {choice[0]};
      commit_verdict_locked(r, L, plain);
    } else {
      Verdict v = verify_greedy(rd.merged, choice);
      adapt_depth_locked(r, rd, v);
      commit_verdict_locked(r, L, v);
    }
  }
}

void SpecManager::adapt_depth_locked(Request &r, const Round &rd, const Verdict &v) {
  int drafted = 0;
  for (const TreeNode &n : rd.merged.nodes()) drafted = std::max(drafted, n.depth);
  const int accepted = static_cast<int>(v.accepted.size());
  r.spec_depth = accepted >= drafted ? std::min(shape_.max_depth, 2 * std::max(1, drafted)) : accepted + 1;
}

void SpecManager::commit_verdict_locked(Request &r, int L, const Verdict &v) {
  r.decoding_steps++;
  int emitted = 0;
  for (int32_t tok : v.emitted) {
    emitted++;
    if (append_token_locked(r, tok)) {
      r.accepted_per_step.push_back(emitted);
      return;  // finished: its slot's cache no longer matters
    }
  }
  r.accepted_per_step.push_back(emitted);
  if (v.accepted.empty()) return;
  // The accepted nodes' K/V go to L+1, L+2, ... before the next LLM step reads them.
  std::vector<KvMove> &mv = commits_[r.slot];
  for (size_t k = 0; k < v.accepted.size(); k++)
    mv.push_back({r.slot, L + 1 + v.accepted[k], L + 1 + static_cast<int>(k)});
  r.num_computed = L + 1 + static_cast<int>(v.accepted.size());
  for (int &c : r.ssm_computed) c = std::min(c, r.num_computed);
}

void SpecManager::update(const std::vector<StepBatch> &batches, const std::vector<StepResult> &results) {
  std::lock_guard<std::mutex> lock(mu_);
  if (drafting_) {
    update_draft_locked(batches, results);
  } else {
    update_verify_locked(batches.at(0), results.at(0));
    // Slots of finished requests may be reused: their pending moves are void.
    for (auto it = commits_.begin(); it != commits_.end();) {
      bool live = false;
      for (uint64_t g : running_) live = live || requests_.at(g).slot == it->first;
      it = live ? std::next(it) : commits_.erase(it);
    }
    round_.clear();
  }
  entries_.clear();
  done_cv_.notify_all();
}

void SpecManager::fail_steps(const std::vector<StepBatch> &, const std::string &why) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<uint64_t> guids;
  for (auto &es : entries_)
    for (const Entry &e : es) guids.push_back(e.guid);
  for (uint64_t g : guids) {
    Request &r = requests_.at(g);
    if (r.finish != FinishReason::Running) continue;
    r.error = why;
    finish_locked(r, FinishReason::Error);
  }
  entries_.clear();
  round_.clear();
  drafting_ = false;
  done_cv_.notify_all();
}

}  // namespace ffspec
