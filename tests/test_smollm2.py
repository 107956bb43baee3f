"""The real model: SmolLM2-135M-Instruct greedy generation equals transformers' token for token."""
from __future__ import annotations

import flexflow_spec as ff
from conftest import PROMPTS

N_NEW = 48


def test_greedy_matches_transformers(smollm2, smollm2_tokenizer, hf_greedy):
    ids = [smollm2_tokenizer(p)["input_ids"] for p in PROMPTS]
    expected = hf_greedy(ids, N_NEW)
    results = smollm2.generate(PROMPTS, max_new_tokens=N_NEW)
    assert len(results) == len(PROMPTS)
    for p, r, exp in zip(PROMPTS, results, expected):
        assert r.input_tokens == smollm2_tokenizer(p)["input_ids"]
        assert r.output_tokens == exp, f"prompt {p!r}"
        assert isinstance(r.output_text, str)
        assert r.output_text == smollm2_tokenizer.decode(exp, skip_special_tokens=True)
        # One LLM step per generated token in incremental decoding.
        assert r.llm_decoding_steps == len(r.output_tokens)


def test_token_id_prompt_used_as_given(smollm2, hf_greedy):
    ids = [1, 504, 3575, 282, 4649, 314]  # with a BOS the tokenizer would not add
    (exp,) = hf_greedy([ids], 16)
    r = smollm2.generate(ids, max_new_tokens=16)
    assert r.input_tokens == ids
    assert r.output_tokens == exp


def test_gguf_loads_directly_and_matches(runtime, smollm2_gguf_path, smollm2, smollm2_tokenizer):
    """The GGUF (Q4_1/Q8_0 dequantized on load) gives the same tokens as its HF conversion."""
    llm = ff.LLM(str(smollm2_gguf_path), data_type=ff.DataType.DT_FLOAT)
    llm.compile(ff.GenerationConfig(), max_requests_per_batch=2, max_seq_length=128, max_tokens_per_batch=32)
    prompts = PROMPTS[:2]
    a = llm.generate(prompts, max_new_tokens=24)
    b = smollm2.generate(prompts, max_new_tokens=24)
    for x, y in zip(a, b):
        assert x.input_tokens == y.input_tokens  # the GGUF's own tokenizer agrees
        assert x.output_tokens == y.output_tokens
        assert x.output_text == y.output_text


def test_eos_stops_generation(smollm2, smollm2_tokenizer):
    """The chat-formatted prompt ends in <|im_end|> (EOS id 2) well before the limit."""
    msgs = [{"role": "user", "content": "Say hello."}]
    r = smollm2.generate(msgs, max_new_tokens=200)
    assert r.finish_reason == "eos"
    assert r.output_tokens[-1] in smollm2.eos_token_ids
    assert all(t not in smollm2.eos_token_ids for t in r.output_tokens[:-1])
    assert len(r.output_tokens) < 200


def test_half_and_bfloat16_track_fp32(runtime, smollm2_dir, smollm2):
    """Weights rounded to fp16 / bf16: logits stay within a stated bound of fp32's."""
    import numpy as np
    ref = smollm2.generate(PROMPTS[1], max_new_tokens=4, return_logits=True)
    for dt, tol in ((ff.DataType.DT_HALF, 2e-2), (ff.DataType.DT_BFLOAT16, 1e-1)):
        llm = ff.LLM(str(smollm2_dir), data_type=dt)
        llm.compile(ff.GenerationConfig(), max_requests_per_batch=1, max_seq_length=64, max_tokens_per_batch=32)
        r = llm.generate(ref.input_tokens, max_new_tokens=1, return_logits=True)
        err = np.abs(r.logits[0] - ref.logits[0]).max() / np.abs(ref.logits[0]).max()
        assert err < tol, (dt, err)
        assert r.output_tokens[0] == ref.output_tokens[0]
        del llm
