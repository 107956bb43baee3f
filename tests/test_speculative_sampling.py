"""Speculative sampling is exact: over 10,000 seeded requests, the joint distribution of the
first two generated tokens matches the LLM's own (enumerated with transformers) by a
chi-square goodness-of-fit test (p > 0.001); a deliberately biased verifier fails the same
test. Tiny random models with a 16-token vocabulary; one and two SSMs; T = 1 and T = 0.7
with top-p < 1."""
from __future__ import annotations

import numpy as np
import pytest

import flexflow_spec as ff
from conftest import chi_square_pvalue, make_tiny_llama

VOCAB = 16
PROMPT = [3, 9, 4]
N = 10_000
ALPHA = 1e-3


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("mss")
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5, eos_token_id=None,
                  bos_token_id=None)
    llm = make_tiny_llama(root / "llm", seed=11, **common)
    ssm1 = make_tiny_llama(root / "ssm1", seed=12, **common)
    ssm2 = make_tiny_llama(root / "ssm2", seed=13, **common)
    return llm, [ssm1, ssm2]


def warp(logits: np.ndarray, temperature: float, topp: float, topk: int) -> np.ndarray:
    """The same transformation flexflow_spec applies before sampling."""
    order = sorted(range(len(logits)), key=lambda i: (-logits[i], i))
    keep = order[:topk] if topk else order
    z = np.array([logits[i] for i in keep], dtype=np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if topp < 1:
        n = int(np.searchsorted(np.cumsum(p), topp) + 1)
        p = p[:n] / p[:n].sum()
        keep = keep[:n]
    out = np.zeros(len(logits))
    out[keep] = p
    return out


def exact_joint(llm_dir, temperature, topp) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(llm_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        first = model(torch.tensor([PROMPT])).logits[0, -1].double().numpy()
        ids = torch.tensor([PROMPT + [x] for x in range(VOCAB)])
        second = model(ids).logits[:, -1].double().numpy()
    p1 = warp(first, temperature, topp, 0)
    return np.stack([p1[x] * warp(second[x], temperature, topp, 0) for x in range(VOCAB)])  # [x1, x2]


def sample_joint(llm_dir, ssm_dirs, temperature, topp, verifier, seed_base=0) -> np.ndarray:
    ssms = []
    for d in ssm_dirs:
        s = ff.SSM(str(d), data_type=ff.DataType.DT_FLOAT)
        s.compile(ff.GenerationConfig(), max_requests_per_batch=64, max_seq_length=16, max_tokens_per_batch=512)
        ssms.append(s)
    llm = ff.LLM(str(llm_dir), data_type=ff.DataType.DT_FLOAT)
    # Two children drawn at the root and at each node after it: several attempts per node.
    llm.compile(ff.GenerationConfig(), max_requests_per_batch=64, max_seq_length=16, max_tokens_per_batch=512,
                ssms=ssms, speculation=ff.SpeculationConfig(max_depth=4, widths=(2, 2), max_tree_tokens=16,
                                                            verifier=verifier))
    counts = np.zeros((VOCAB, VOCAB))
    steps = 0
    for chunk in range(N // 1000):
        # Distinct fixed seeds: the test is reproducible, and the draws are independent.
        configs = [ff.GenerationConfig(do_sample=True, temperature=temperature, topp=topp, topk=0,
                                       seed=seed_base + chunk * 1000 + i + 1) for i in range(1000)]
        results = llm.generate([PROMPT] * 1000, max_new_tokens=3, generation_config=configs)
        for r in results:
            counts[r.output_tokens[0], r.output_tokens[1]] += 1
            steps += r.llm_decoding_steps
    # Speculation did happen: fewer LLM steps than tokens.
    assert steps < 3 * N
    return counts


CASES = [(1, 1.0, 1.0), (1, 0.7, 0.9), (2, 1.0, 1.0), (2, 0.7, 0.9)]


@pytest.mark.parametrize("num_ssms,temperature,topp", CASES, ids=[f"{n}ssm-T{t}-p{p}" for n, t, p in CASES])
def test_mss_matches_llm_distribution(runtime, tiny_models, num_ssms, temperature, topp):
    llm_dir, ssm_dirs = tiny_models
    probs = exact_joint(llm_dir, temperature, topp)
    counts = sample_joint(llm_dir, ssm_dirs[:num_ssms], temperature, topp, "mss")
    assert chi_square_pvalue(counts, probs) > ALPHA


def test_mss_self_draft(runtime, tiny_models):
    """The LLM drafting for itself (q == p): every draft is accepted, and the result is still
    exactly the LLM's distribution."""
    llm_dir, _ = tiny_models
    probs = exact_joint(llm_dir, 1.0, 1.0)
    counts = sample_joint(llm_dir, [llm_dir], 1.0, 1.0, "mss", seed_base=50_000)
    assert chi_square_pvalue(counts, probs) > ALPHA


def test_biased_verifier_is_caught(runtime, tiny_models):
    """Accepting a draft whenever it is the LLM's argmax skews the distribution towards the
    argmax: the same test must reject it, or it could not catch a wrong verifier either. The
    LLM drafts for itself here, so its argmax is often among the drafts and the bias is large
    (with a random SSM it is proposed rarely and the skew is near the test's resolution)."""
    llm_dir, _ = tiny_models
    probs = exact_joint(llm_dir, 1.0, 1.0)
    counts = sample_joint(llm_dir, [llm_dir], 1.0, 1.0, "argmax_match", seed_base=50_000)
    assert chi_square_pvalue(counts, probs) < 1e-12
