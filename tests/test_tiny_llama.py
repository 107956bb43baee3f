"""Tiny random LLaMA checkpoints: logits within 1e-4 relative error of transformers for the
prefill and each decode step, greedy tokens identical."""
from __future__ import annotations

import numpy as np
import pytest

import flexflow_spec as ff
from conftest import make_tiny_llama

VARIANTS = {
    "mha": dict(num_key_value_heads=4),
    "gqa": dict(num_key_value_heads=2),
    "mqa_tied": dict(num_key_value_heads=1, tie_word_embeddings=True),
    "llama3_rope": dict(num_key_value_heads=2, rope_theta=500000.0,
                        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                          high_freq_factor=4.0, original_max_position_embeddings=64)),
    "linear_rope": dict(rope_scaling=dict(rope_type="linear", factor=2.0)),
    "head_dim_32": dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=1),
}
N_DECODE = 10
REL_TOL = 1e-4


def hf_steps(path, prompt, n):
    """transformers' logits for the prefill and n greedy steps (no KV cache shortcuts)."""
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    ids = list(prompt)
    logits, tokens = [], []
    with torch.no_grad():
        for _ in range(n + 1):
            out = model(torch.tensor([ids])).logits[0, -1].numpy()
            tok = int(out.argmax())
            logits.append(out)
            tokens.append(tok)
            ids.append(tok)
    return np.stack(logits), tokens


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_and_tokens_match_transformers(runtime, tmp_path, variant):
    path = make_tiny_llama(tmp_path / variant, seed=sorted(VARIANTS).index(variant), **VARIANTS[variant])
    prompt = [1, 17, 33, 5, 60, 61, 9, 90, 44, 3, 12]
    ref_logits, ref_tokens = hf_steps(path, prompt, N_DECODE)
    llm = ff.LLM(str(path), data_type=ff.DataType.DT_FLOAT)
    llm.compile(ff.GenerationConfig(), max_requests_per_batch=2, max_seq_length=128, max_tokens_per_batch=8)
    r = llm.generate(prompt, max_new_tokens=N_DECODE + 1, return_logits=True)
    assert r.output_tokens == ref_tokens
    assert r.logits.shape == ref_logits.shape
    for step in range(N_DECODE + 1):
        err = np.abs(r.logits[step] - ref_logits[step]).max() / np.abs(ref_logits[step]).max()
        assert err < REL_TOL, f"step {step}: relative error {err:.2e}"
