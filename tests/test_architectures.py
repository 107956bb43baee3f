"""Other LLaMA-family layouts and checkpoint forms, each against transformers: Qwen2 (QKV
bias), Mistral, a sharded safetensors checkpoint with an index, fp16 / bf16 checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
from test_tiny_llama import N_DECODE, REL_TOL, hf_steps

import flexflow_spec as ff

PROMPT = [1, 17, 33, 5, 60, 61, 9, 90, 44, 3, 12]


def check_against_hf(path, data_type=ff.DataType.DT_FLOAT, hf_dtype=None, rel_tol=REL_TOL):
    ref_logits, ref_tokens = hf_steps(path, PROMPT, N_DECODE)
    llm = ff.LLM(str(path), data_type=data_type)
    llm.compile(ff.GenerationConfig(), max_requests_per_batch=1, max_seq_length=64, max_tokens_per_batch=8)
    r = llm.generate(PROMPT, max_new_tokens=N_DECODE + 1, return_logits=True)
    assert r.output_tokens == ref_tokens
    for step in range(N_DECODE + 1):
        err = np.abs(r.logits[step] - ref_logits[step]).max() / np.abs(ref_logits[step]).max()
        assert err < rel_tol, f"step {step}: relative error {err:.2e}"


def save(model, path, **kw):
    model.save_pretrained(str(path), safe_serialization=True, **kw)
    return path


def test_qwen2_with_qkv_bias(runtime, tmp_path):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(5)
    cfg = Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.2, tie_word_embeddings=False, use_sliding_window=False)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # biases start at zero: make them matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    check_against_hf(save(model, tmp_path / "qwen2"))


def test_mistral(runtime, tmp_path):
    import torch
    from transformers import MistralConfig, MistralForCausalLM
    torch.manual_seed(6)
    cfg = MistralConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256,
                        initializer_range=0.2, sliding_window=None)
    check_against_hf(save(MistralForCausalLM(cfg).eval(), tmp_path / "mistral"))


def test_sharded_checkpoint_with_index(runtime, tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(7)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)
    path = save(LlamaForCausalLM(cfg).eval(), tmp_path / "sharded", max_shard_size="60KB")
    assert (path / "model.safetensors.index.json").exists()
    assert len(list(path.glob("*.safetensors"))) > 2
    check_against_hf(path)


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_half_precision_checkpoints(runtime, tmp_path, dtype_name):
    """fp16 / bf16 safetensors read exactly: fp32 compute on the stored values matches
    transformers running the same stored values in fp32."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(8)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)
    model = LlamaForCausalLM(cfg).to(getattr(torch, dtype_name)).eval()
    half_dir = save(model, tmp_path / dtype_name)
    # The reference: the same stored values, upcast to fp32.
    full_dir = save(model.to(torch.float32), tmp_path / f"{dtype_name}-as-fp32")
    ref_logits, ref_tokens = hf_steps(full_dir, PROMPT, N_DECODE)
    llm = ff.LLM(str(half_dir), data_type=ff.DataType.DT_FLOAT)
    llm.compile(ff.GenerationConfig(), max_requests_per_batch=1, max_seq_length=64, max_tokens_per_batch=8)
    r = llm.generate(PROMPT, max_new_tokens=N_DECODE + 1, return_logits=True)
    assert r.output_tokens == ref_tokens
    err = max(np.abs(r.logits[s] - ref_logits[s]).max() / np.abs(ref_logits[s]).max() for s in range(N_DECODE + 1))
    assert err < REL_TOL
