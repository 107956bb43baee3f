"""Sampling: a fixed seed repeats exactly; unseeded requests draw their own randomness;
the first token's distribution matches softmax(logits / T) within a chi-square bound."""
from __future__ import annotations

import numpy as np
import pytest

import flexflow_spec as ff
from conftest import chi_square_pvalue, make_tiny_llama


def test_seeded_sampling_repeats(smollm2):
    cfg = ff.GenerationConfig(do_sample=True, temperature=1.0, topp=0.95, topk=50, seed=1234)
    a = smollm2.generate("Write a short poem about rain.", max_new_tokens=24, generation_config=cfg)
    b = smollm2.generate("Write a short poem about rain.", max_new_tokens=24, generation_config=cfg)
    assert a.output_tokens == b.output_tokens
    # Batched with other requests, the seeded request still draws the same tokens.
    batch = smollm2.generate(["Write a short poem about rain.", "Hello there", "The year 1999 was"],
                             max_new_tokens=24, generation_config=cfg)
    assert batch[0].output_tokens == a.output_tokens
    other = smollm2.generate("Write a short poem about rain.", max_new_tokens=24,
                             generation_config=ff.GenerationConfig(do_sample=True, temperature=1.0, topp=0.95,
                                                                   topk=50, seed=999))
    assert other.output_tokens != a.output_tokens


def test_unseeded_requests_differ(smollm2):
    cfg = ff.GenerationConfig(do_sample=True, temperature=1.0, topp=1.0, topk=0)
    outs = {tuple(r.output_tokens) for r in smollm2.generate(["Once upon a time"] * 4, max_new_tokens=16,
                                                             generation_config=cfg)}
    assert len(outs) == 4


@pytest.mark.parametrize("temperature,topk", [(1.0, 0), (0.7, 0), (1.0, 5)])
def test_first_token_distribution(runtime, tmp_path, temperature, topk):
    import torch
    from transformers import AutoModelForCausalLM
    path = make_tiny_llama(tmp_path / "m", vocab_size=16, initializer_range=0.3, seed=3)
    prompt = [1, 7, 3]
    with torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        logits = model(torch.tensor([prompt])).logits[0, -1]
    z = logits.double() / temperature
    if topk:
        kth = torch.topk(z, topk).values[-1]
        z = torch.where(z >= kth, z, torch.tensor(-float("inf"), dtype=z.dtype))
    p = torch.softmax(z, -1).numpy()
    llm = ff.LLM(str(path), data_type=ff.DataType.DT_FLOAT)
    llm.compile(ff.GenerationConfig(), max_requests_per_batch=64, max_seq_length=8, max_tokens_per_batch=256)
    n = 4000
    counts = np.zeros(16)
    for _ in range(n // 500):
        results = llm.generate([prompt] * 500, max_new_tokens=1, generation_config=ff.GenerationConfig(
            do_sample=True, temperature=temperature, topp=1.0, topk=topk, seed=None))
        for r in results:
            counts[r.output_tokens[0]] += 1
    assert counts[p == 0].sum() == 0, "drew a token outside top-k"
    pvalue = chi_square_pvalue(counts, p)
    assert pvalue > 1e-3, (pvalue, counts, p * n)
