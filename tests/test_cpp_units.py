"""Runs the C++ unit tests: the serving core (scheduling, token trees, speculation
bookkeeping; no Legion), tree attention against a naive reference, and the streamed weight
loader of the GPU backend against the CPU's."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(name, *args):
    exe = next(iter(sorted(ROOT.glob(f"build/**/tests/cpp/{name}"))), None)
    if exe is None:
        pytest.fail(f"build/.../tests/cpp/{name} not found: build the project first (scripts/install.sh)")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name,min_checks", [("test_serve", 60), ("test_tree_attention", 20)])
def test_cpp_suite(name, min_checks):
    out = _run(name)
    m = re.search(r"(\d+) passed, (\d+) failed", out.stdout)
    assert m, out.stdout + out.stderr
    assert out.returncode == 0 and int(m.group(2)) == 0, out.stdout
    assert int(m.group(1)) >= min_checks


def test_streamed_weights_match_load_weights(tmp_path):
    """LLaMA (untied) and Qwen2-like (QKV bias, tied embeddings) checkpoints, 3 dtypes each."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from conftest import make_tiny_llama
    llama = make_tiny_llama(tmp_path / "llama", seed=5)
    torch.manual_seed(6)
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                        max_position_embeddings=256)).eval()
    qwen.save_pretrained(str(tmp_path / "qwen2"), safe_serialization=True)
    out = _run("test_weights", llama, tmp_path / "qwen2")
    m = re.search(r"(\d+) passed, (\d+) failed", out.stdout)
    assert m, out.stdout + out.stderr
    assert out.returncode == 0 and int(m.group(2)) == 0, out.stdout
    assert int(m.group(1)) == 2 * 3 * 6, out.stdout
