"""Speculative inference with token tree verification: greedy output equals incremental
output token for token; an accurate SSM cuts LLM steps at least 3x; EOS stops speculation."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

import flexflow_spec as ff
from conftest import PROMPTS, make_tiny_llama

N_NEW = 48
SPEC_PROMPTS = PROMPTS[:5]


@pytest.fixture(scope="session")
def random_ssm_dir(tmp_path_factory):
    """(a) a tiny random LLaMA sharing SmolLM2's vocabulary: its guesses are mostly rejected."""
    return make_tiny_llama(tmp_path_factory.mktemp("ssm") / "random", vocab_size=49152, hidden_size=64,
                           intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=8192, eos_token_id=2)


@pytest.fixture(scope="session")
def incremental(smollm2, smollm2_tokenizer):
    """Incremental greedy outputs of the SmolLM2 fp32 LLM (the reference) and its step counts."""
    ids = [smollm2_tokenizer(p)["input_ids"] for p in SPEC_PROMPTS]
    res = smollm2.generate(ids, max_new_tokens=N_NEW)
    return ids, [r.output_tokens for r in res], [r.llm_decoding_steps for r in res]


@contextlib.contextmanager
def speculative_llm(smollm2_dir, random_ssm_dir, kinds, speculation, max_requests=4):
    ssms = []
    for kind in kinds:
        if kind == "random":
            ssm = ff.SSM(str(random_ssm_dir), data_type=ff.DataType.DT_FLOAT)
        else:  # SmolLM2 itself with fp16-rounded weights: almost always right
            ssm = ff.SSM(str(smollm2_dir), data_type=ff.DataType.DT_HALF)
        # SSMs may have other limits than the LLM.
        ssm.compile(ff.GenerationConfig(), max_requests_per_batch=max_requests + 1, max_seq_length=320,
                    max_tokens_per_batch=48)
        ssms.append(ssm)
    llm = ff.LLM(str(smollm2_dir), data_type=ff.DataType.DT_FLOAT)
    llm.compile(ff.GenerationConfig(), max_requests_per_batch=max_requests, max_seq_length=256,
                max_tokens_per_batch=160, ssms=ssms, speculation=speculation)
    try:
        yield llm
    finally:
        del llm, ssms


MODES = {"tree": ff.SpeculationConfig(), "chain": ff.SpeculationConfig.chain(8)}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("kinds", [("random",), ("fp16",), ("random", "fp16")], ids=["random", "fp16", "both"])
def test_greedy_speculative_equals_incremental(runtime, smollm2_dir, random_ssm_dir, incremental, kinds, mode):
    ids, expected, _ = incremental
    with speculative_llm(smollm2_dir, random_ssm_dir, kinds, MODES[mode]) as llm:
        alone = [llm.generate(p, max_new_tokens=N_NEW) for p in ids]
        for r, exp in zip(alone, expected):
            assert r.output_tokens == exp
            assert sum(r.accepted_tokens) == len(r.output_tokens)
            assert len(r.accepted_tokens) == r.llm_decoding_steps
            assert max(r.accepted_tokens) <= MODES[mode].max_depth + 1
        # 5 requests, 4 slots: batched, with one joining as another finishes.
        batched = llm.generate(ids, max_new_tokens=N_NEW)
        assert [r.output_tokens for r in batched] == expected


@pytest.fixture(scope="module")
def tiny_spec(runtime, tmp_path_factory):
    """Tiny random LLaMAs for speculation without SmolLM2 (fast everywhere, the GPU emulator
    included): the LLM, an unrelated SSM, prompts of 3 to 40 tokens, and the LLM's own
    incremental greedy outputs."""
    root = tmp_path_factory.mktemp("tiny_spec")
    kw = dict(vocab_size=256, max_position_embeddings=512, num_key_value_heads=2)
    llm_dir = make_tiny_llama(root / "llm", seed=21, **kw)
    other_dir = make_tiny_llama(root / "other", seed=22, **kw)
    rng = np.random.default_rng(5)
    prompts = [rng.integers(3, 256, n).tolist() for n in (3, 17, 40, 9, 25)]
    ref = ff.LLM(str(llm_dir), data_type=ff.DataType.DT_FLOAT)
    ref.compile(ff.GenerationConfig(), max_requests_per_batch=4, max_seq_length=128, max_tokens_per_batch=64)
    expected = [r.output_tokens for r in ref.generate(prompts, max_new_tokens=TINY_NEW)]
    del ref
    return llm_dir, other_dir, prompts, expected


TINY_NEW = 40


@pytest.mark.parametrize("mode", sorted(MODES))
def test_greedy_speculative_equals_incremental_tiny(runtime, tiny_spec, mode):
    """The same property as above on tiny models, with two SSMs at once: the LLM's own
    weights in fp16 (mostly right) and an unrelated model (mostly wrong); alone and batched
    (5 requests, 4 slots)."""
    llm_dir, other_dir, prompts, expected = tiny_spec
    close = ff.SSM(str(llm_dir), data_type=ff.DataType.DT_HALF)
    wrong = ff.SSM(str(other_dir), data_type=ff.DataType.DT_FLOAT)
    for s in (close, wrong):
        s.compile(ff.GenerationConfig(), max_requests_per_batch=5, max_seq_length=160, max_tokens_per_batch=48)
    llm = ff.LLM(str(llm_dir), data_type=ff.DataType.DT_FLOAT)
    llm.compile(ff.GenerationConfig(), max_requests_per_batch=4, max_seq_length=128, max_tokens_per_batch=96,
                ssms=[close, wrong], speculation=MODES[mode])
    alone = [llm.generate(p, max_new_tokens=TINY_NEW) for p in prompts[:2]]
    batched = llm.generate(prompts, max_new_tokens=TINY_NEW)
    for r, exp in zip(alone + batched, expected[:2] + expected):
        assert r.output_tokens == exp
        assert sum(r.accepted_tokens) == len(r.output_tokens)
        assert len(r.accepted_tokens) == r.llm_decoding_steps
    # The fp16 copy is right almost always: far fewer LLM steps than tokens.
    tokens, steps = sum(len(e) for e in expected), sum(r.llm_decoding_steps for r in batched)
    assert steps * 2 <= tokens, (steps, tokens)


def test_accurate_ssm_cuts_llm_steps(runtime, smollm2_dir, random_ssm_dir, incremental):
    ids, expected, inc_steps = incremental
    with speculative_llm(smollm2_dir, random_ssm_dir, ("fp16",), ff.SpeculationConfig()) as llm:
        res = llm.generate(ids, max_new_tokens=N_NEW)
    assert [r.output_tokens for r in res] == expected
    spec_steps = sum(r.llm_decoding_steps for r in res)
    assert spec_steps * 3 <= sum(inc_steps), (spec_steps, sum(inc_steps))


def test_random_ssm_still_makes_progress(runtime, smollm2_dir, random_ssm_dir, incremental):
    """With a useless SSM every step still emits at least the LLM's own token."""
    ids, expected, inc_steps = incremental
    with speculative_llm(smollm2_dir, random_ssm_dir, ("random",), ff.SpeculationConfig()) as llm:
        r = llm.generate(ids[0], max_new_tokens=N_NEW)
    assert r.output_tokens == expected[0]
    assert r.llm_decoding_steps <= inc_steps[0]
    assert min(r.accepted_tokens) >= 1


def test_eos_stops_speculation(runtime, smollm2_dir, random_ssm_dir, smollm2):
    msgs = [{"role": "user", "content": "Say hello."}]
    ref = smollm2.generate(msgs, max_new_tokens=200)
    assert ref.finish_reason == "eos"
    with speculative_llm(smollm2_dir, random_ssm_dir, ("fp16",), ff.SpeculationConfig()) as llm:
        r = llm.generate(msgs, max_new_tokens=200)
    assert r.finish_reason == "eos"
    assert r.output_tokens == ref.output_tokens  # nothing after the EOS
    assert r.output_tokens[-1] in llm.eos_token_ids


def test_speculation_settings_are_checked(runtime, smollm2_dir, random_ssm_dir):
    ssm = ff.SSM(str(random_ssm_dir), data_type=ff.DataType.DT_FLOAT)
    llm = ff.LLM(str(smollm2_dir), data_type=ff.DataType.DT_FLOAT)
    with pytest.raises(ff.StateError, match="ssm.compile"):
        llm.compile(ff.GenerationConfig(), ssms=[ssm])
    ssm.compile(ff.GenerationConfig(), max_requests_per_batch=1, max_seq_length=64, max_tokens_per_batch=16)
    with pytest.raises(ValueError, match="max_tree_tokens"):
        llm.compile(ff.GenerationConfig(), ssms=[ssm], speculation=ff.SpeculationConfig(max_tree_tokens=65))
    with pytest.raises(ValueError, match="widths"):
        llm.compile(ff.GenerationConfig(), ssms=[ssm], speculation=ff.SpeculationConfig(widths=(1, 0)))
    tiny = make_tiny_llama(random_ssm_dir.parent / "tiny_vocab")
    other = ff.SSM(str(tiny), data_type=ff.DataType.DT_FLOAT)
    other.compile(ff.GenerationConfig(), max_requests_per_batch=1, max_seq_length=64, max_tokens_per_batch=16)
    with pytest.raises(ValueError, match="vocabulary"):
        llm.compile(ff.GenerationConfig(), ssms=[other])


def test_tight_budget_mixed_requests(runtime, smollm2_dir, random_ssm_dir, smollm2, smollm2_tokenizer):
    """A 16-token verify budget shared by a long prompt being prefilled and several requests
    speculating (greedy and sampled): nobody starves and greedy output equals incremental. A
    seeded sampled request repeats exactly when run the same way (alone); in speculative mode
    its sample path depends on the trees drafted, which depend on what shares the batch."""
    long_prompt = ("In the beginning of the twentieth century, the small coastal town was known mostly for its "
                   "fishing fleet, its lighthouse, and a bakery whose bread")
    prompts = [PROMPTS[1], long_prompt, PROMPTS[2]]
    expected = [r.output_tokens for r in smollm2.generate(prompts, max_new_tokens=24)]
    sampled_cfg = ff.GenerationConfig(do_sample=True, temperature=0.8, topp=0.95, topk=0, seed=42)
    ssm = ff.SSM(str(smollm2_dir), data_type=ff.DataType.DT_HALF)
    ssm.compile(ff.GenerationConfig(), max_requests_per_batch=4, max_seq_length=256, max_tokens_per_batch=16)
    llm = ff.LLM(str(smollm2_dir), data_type=ff.DataType.DT_FLOAT)
    llm.compile(ff.GenerationConfig(), max_requests_per_batch=4, max_seq_length=256, max_tokens_per_batch=16,
                ssms=[ssm], speculation=ff.SpeculationConfig())
    import threading
    out = {}
    t = threading.Thread(target=lambda: out.setdefault(
        "sampled", llm.generate(PROMPTS[3], max_new_tokens=24, generation_config=sampled_cfg)))
    t.start()
    got = llm.generate(prompts, max_new_tokens=24)
    t.join(timeout=300)
    assert [r.output_tokens for r in got] == expected
    assert len(out["sampled"].output_tokens) == 24
    alone = [llm.generate(PROMPTS[3], max_new_tokens=24, generation_config=sampled_cfg).output_tokens
             for _ in range(2)]
    assert alone[0] == alone[1] and len(alone[0]) == 24
    # Speculation still happened under the tight budget.
    assert sum(r.llm_decoding_steps for r in got) < sum(len(r.output_tokens) for r in got)


def driver_scenario(smollm2_dir, random_ssm_dir, ids):
    """What test_pipelined_speculation_gives_the_same_results compares between the two step
    drivers: batched greedy speculation with two SSMs (tokens and the tokens each LLM step
    accepted), a sampled (MSS) request, then an SSM freed while its LLM still serves."""
    rnd = ff.SSM(str(random_ssm_dir), data_type=ff.DataType.DT_FLOAT)
    close = ff.SSM(str(smollm2_dir), data_type=ff.DataType.DT_HALF)
    for ssm in (rnd, close):
        ssm.compile(ff.GenerationConfig(), max_requests_per_batch=5, max_seq_length=320, max_tokens_per_batch=48)
    llm = ff.LLM(str(smollm2_dir), data_type=ff.DataType.DT_FLOAT)
    llm.compile(ff.GenerationConfig(), max_requests_per_batch=4, max_seq_length=256, max_tokens_per_batch=160,
                ssms=[rnd, close], speculation=ff.SpeculationConfig())
    res = llm.generate(ids, max_new_tokens=N_NEW)
    out = {"greedy": [r.output_tokens for r in res], "accepted": [r.accepted_tokens for r in res]}
    sampled = llm.generate(ids[1], max_new_tokens=24, generation_config=ff.GenerationConfig(
        do_sample=True, temperature=0.8, topp=0.9, seed=11))
    out["sampled"] = [sampled.output_tokens, sampled.accepted_tokens]
    out["steps"] = llm.stats()["steps"]
    # Python keeps an LLM's SSMs alive; dropping every reference frees one under it (as the C
    # API allows): its requests then fail, naming why, and the rest keeps working.
    llm.ssms.remove(rnd)
    del rnd, ssm
    try:
        llm.generate(ids[0], max_new_tokens=8)
        out["after_free"] = "no error"
    except ff.FlexFlowSpecError as e:
        out["after_free"] = f"{type(e).__name__}: {e}"
    del llm  # its remaining SSM serves on its own again
    out["close_alone"] = close.generate(ids[2], max_new_tokens=8).output_tokens
    del close
    return out


_DRIVER = r'''
import json, sys
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["tests"])
import flexflow_spec as ff
ff.init(num_cpus=2, system_memory=4096, num_gpus=cfg["num_gpus"])
from pathlib import Path
import test_speculative
out = test_speculative.driver_scenario(Path(cfg["llm"]), Path(cfg["ssm"]), cfg["ids"])
print("RESULT " + json.dumps(out))
'''


def test_pipelined_speculation_gives_the_same_results(runtime, smollm2_dir, random_ssm_dir, incremental):
    """The pipelined driver (a step's tasks for the LLM and every SSM launched before its plan
    is made; the default with GPUs) and the synchronous one run speculation step for step
    alike: the same tokens, the same tokens accepted at every LLM step, the same MSS samples,
    and the same failure when an SSM is freed under its LLM. This process runs one driver, a
    subprocess on the same backend the other."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    ids, expected, _ = incremental
    here = driver_scenario(smollm2_dir, random_ssm_dir, ids)
    assert here["greedy"] == expected
    assert "a model this step needs was freed" in here["after_free"], here["after_free"]
    assert here["close_alone"] == expected[2][:8]
    cfg = json.dumps({"tests": str(Path(__file__).parent), "llm": str(smollm2_dir), "ssm": str(random_ssm_dir),
                      "ids": ids, "num_gpus": runtime["num_gpus"]})
    env_now = os.environ.get("FFS_STEP_PIPELINE")
    pipelined_here = env_now != "0" if env_now else runtime["num_gpus"] > 0
    env = {**os.environ, "FFS_STEP_PIPELINE": "0" if pipelined_here else "1"}
    proc = subprocess.run([sys.executable, "-c", _DRIVER, cfg], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    there = json.loads(line[len("RESULT "):])
    # Step counts are read as the last request finishes, which may be just before that step's
    # timing is recorded: both drivers counted steps, and the same number of LLM steps per
    # request is already asserted through the accepted tokens.
    assert here.pop("steps") > 0 and there.pop("steps") > 0
    assert there == here
