"""Shared fixtures. The SmolLM2 GGUF, its safetensors conversion and Hugging Face's
reference outputs are made once and cached on disk (~/.cache/flexflow_spec/fixtures), so
a second run of the suite, or CI on a machine that ran it before, does not redo them."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

# Tests never wait on a model hub: a Hugging Face id missing from the caches fails at once.
os.environ["HF_HUB_OFFLINE"] = "1"

import flexflow_spec as ff  # noqa: E402
from flexflow_spec.fixtures import fixtures_dir, smollm2_gguf, smollm2_hf_dir  # noqa: E402

PROMPTS = [
    "Three tips for staying healthy are: ",
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea,",
    "Explain why the sky is blue.",
    "List three prime numbers greater than 100:",
]


# The session's ff.init() settings. FFS_TEST_NUM_GPUS=1 runs the same suites on the GPU
# backend (tests/test_gpu.py does that on a machine with a GPU): models then live in the
# framebuffer and step on the GPU, and every assertion below must hold there too.
RUNTIME_ARGS = {"num_cpus": 2, "system_memory": 6144, "num_gpus": int(os.environ.get("FFS_TEST_NUM_GPUS", "0"))}


@pytest.fixture(scope="session")
def runtime():
    """Legion, started once for the whole session (CPU only unless FFS_TEST_NUM_GPUS)."""
    return ff.init(**RUNTIME_ARGS)


def _fixture_or_skip(make):
    """Fixtures are fetched when missing, and a failure fails the test, except on a machine
    that cannot fetch by design (a lent GPU machine has no network): there
    FFS_TEST_SKIP_MISSING_FIXTURES=1 turns it into a skip that says so."""
    try:
        return make()
    except Exception as e:  # noqa: BLE001 - re-raised unless skipping was asked for
        if os.environ.get("FFS_TEST_SKIP_MISSING_FIXTURES") == "1":
            pytest.skip(f"fixture unavailable on this machine ({type(e).__name__}: {str(e)[:200]})")
        raise


@pytest.fixture(scope="session")
def smollm2_gguf_path() -> Path:
    return _fixture_or_skip(smollm2_gguf)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    return _fixture_or_skip(smollm2_hf_dir)


@pytest.fixture(scope="session")
def smollm2(runtime, smollm2_dir):
    """SmolLM2 fp32, compiled once: 4 requests per batch, chunked prefill at 64 tokens."""
    llm = ff.LLM(str(smollm2_dir), data_type=ff.DataType.DT_FLOAT)
    llm.compile(ff.GenerationConfig(do_sample=False), max_requests_per_batch=4, max_seq_length=256,
                max_tokens_per_batch=64)
    return llm


def _cache_key(*parts) -> str:
    import transformers
    h = hashlib.sha256()
    for p in parts + (transformers.__version__,):
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _weights_fingerprint(model_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(model_dir.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def hf_greedy(smollm2_dir):
    """hf_greedy(token_lists, n) -> transformers' greedy continuations, cached on disk."""
    memo = {}

    def run(prompts_ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        key = _cache_key("greedy", _weights_fingerprint(smollm2_dir), prompts_ids, max_new_tokens)
        path = fixtures_dir() / "hf_reference" / f"{key}.json"
        if key in memo:
            return memo[key]
        if path.exists():
            memo[key] = json.loads(path.read_text())
            return memo[key]
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32)
        model.eval()
        outs = []
        with torch.no_grad():
            for ids in prompts_ids:
                inp = torch.tensor([ids])
                gen = model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=model.config.eos_token_id)
                outs.append(gen[0, len(ids):].tolist())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(outs))
        memo[key] = outs
        return outs

    return run


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(smollm2_dir))


def make_tiny_llama(path: Path, seed: int = 0, **overrides) -> Path:
    """A tiny random LlamaForCausalLM saved as safetensors (fp32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = dict(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=4, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0,
               tie_word_embeddings=False, initializer_range=0.2, bos_token_id=1, eos_token_id=2)
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).to(torch.float32).eval()
    model.save_pretrained(str(path), safe_serialization=True)
    return path


def chi_square_pvalue(counts, probs) -> float:
    """Pearson's chi-square goodness of fit of draw counts to probabilities. Cells expected
    fewer than 5 times are pooled into one (the test's validity condition: one draw of a token
    expected 0.07 times would otherwise alone give p < 1e-20)."""
    import numpy as np
    from scipy.stats import chisquare
    counts, probs = np.asarray(counts, dtype=float), np.asarray(probs, dtype=float)
    expected = probs.ravel() * counts.sum()
    obs = counts.ravel()
    assert obs[expected == 0].sum() == 0, "a pair with zero probability was drawn"
    big = expected >= 5  # pool the small cells into one bin
    f_obs = np.append(obs[big], obs[~big].sum())
    f_exp = np.append(expected[big], expected[~big].sum())
    if f_exp[-1] == 0:
        f_obs, f_exp = f_obs[:-1], f_exp[:-1]
    return chisquare(f_obs, f_exp).pvalue
