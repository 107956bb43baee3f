"""Speculative inference with token tree verification: greedy output equals incremental
output token for token; an accurate SSM cuts LLM steps at least 3x; EOS stops speculation."""
from __future__ import annotations

import contextlib

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
