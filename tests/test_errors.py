"""Bad input gets a typed exception that names the problem, and the process keeps working."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import flexflow_spec as ff
from conftest import RUNTIME_ARGS, make_tiny_llama


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "m")


@pytest.fixture(scope="module")
def tiny_llm(runtime, tiny_dir):
    llm = ff.LLM(str(tiny_dir), data_type=ff.DataType.DT_FLOAT)
    llm.compile(ff.GenerationConfig(), max_requests_per_batch=2, max_seq_length=32, max_tokens_per_batch=8)
    return llm


@pytest.fixture(scope="module")
def reference_tokens(tiny_llm):
    return tiny_llm.generate([1, 2, 3, 4], max_new_tokens=8).output_tokens


def still_works(llm, ref):
    assert llm.generate([1, 2, 3, 4], max_new_tokens=8).output_tokens == ref


def copy_ckpt(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_path(runtime, tiny_llm, reference_tokens, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        ff.LLM(str(tmp_path / "nope"))
    still_works(tiny_llm, reference_tokens)


def test_malformed_config(runtime, tiny_llm, reference_tokens, tiny_dir, tmp_path):
    d = copy_ckpt(tiny_dir, tmp_path / "bad_json")
    (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "hidden_size": 64,')
    with pytest.raises(ff.CheckpointError, match=r"config\.json.*invalid JSON"):
        ff.LLM(str(d))
    cfg = json.loads((tiny_dir / "config.json").read_text())
    del cfg["num_hidden_layers"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="num_hidden_layers"):
        ff.LLM(str(d))
    cfg["num_hidden_layers"] = "two"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ff.CheckpointError, match="num_hidden_layers"):
        ff.LLM(str(d))
    still_works(tiny_llm, reference_tokens)


def test_unsupported_architecture(runtime, tiny_llm, reference_tokens, tiny_dir, tmp_path):
    d = copy_ckpt(tiny_dir, tmp_path / "arch")
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ff.UnsupportedModelError, match="GPT2LMHeadModel"):
        ff.LLM(str(d))
    still_works(tiny_llm, reference_tokens)


def _rewrite_safetensors(src_dir, dst_dir, edit):
    from safetensors.torch import load_file, save_file
    f = next(src_dir.glob("*.safetensors"))
    tensors = load_file(str(f))
    edit(tensors)
    save_file(tensors, str(dst_dir / f.name), metadata={"format": "pt"})


def test_missing_tensor(runtime, tiny_llm, reference_tokens, tiny_dir, tmp_path):
    d = copy_ckpt(tiny_dir, tmp_path / "missing")
    _rewrite_safetensors(tiny_dir, d, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ff.CheckpointError, match=r"missing tensor model\.layers\.1\.mlp\.up_proj\.weight"):
        ff.LLM(str(d))
    still_works(tiny_llm, reference_tokens)


def test_misshaped_tensor(runtime, tiny_llm, reference_tokens, tiny_dir, tmp_path):
    d = copy_ckpt(tiny_dir, tmp_path / "shape")

    def edit(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:, :32].contiguous()

    _rewrite_safetensors(tiny_dir, d, edit)
    with pytest.raises(ff.CheckpointError, match=r"k_proj\.weight has shape \[64, 32\], expected \[64, 64\]"):
        ff.LLM(str(d))
    still_works(tiny_llm, reference_tokens)


def test_truncated_weights_file(runtime, tiny_llm, reference_tokens, tiny_dir, tmp_path):
    d = copy_ckpt(tiny_dir, tmp_path / "trunc")
    f = next(d.glob("*.safetensors"))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ff.CheckpointError, match="outside the file"):
        ff.LLM(str(d))
    still_works(tiny_llm, reference_tokens)


def test_not_a_gguf(runtime, tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"not a gguf at all")
    with pytest.raises(ff.CheckpointError, match="bad magic"):
        ff.LLM(str(f))


def test_prompt_longer_than_max_seq_length(tiny_llm, reference_tokens):
    with pytest.raises(ValueError, match=r"prompt has 40 tokens but max_seq_length is 32"):
        tiny_llm.generate(list(range(3, 43)), max_new_tokens=4)
    still_works(tiny_llm, reference_tokens)


def test_invalid_generation_settings(tiny_llm, reference_tokens):
    with pytest.raises(ValueError, match="temperature"):
        tiny_llm.generate([1, 2], max_new_tokens=2,
                          generation_config=ff.GenerationConfig(do_sample=True, temperature=0))
    with pytest.raises(ValueError, match="topp"):
        tiny_llm.generate([1, 2], max_new_tokens=2, generation_config=ff.GenerationConfig(do_sample=True, topp=1.5))
    with pytest.raises(ValueError, match="topk"):
        tiny_llm.generate([1, 2], max_new_tokens=2, generation_config=ff.GenerationConfig(do_sample=True, topk=-3))
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny_llm.generate([1, 2], max_new_tokens=-7)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny_llm.generate([1, 100000], max_new_tokens=2)
    with pytest.raises(ValueError, match="empty"):
        tiny_llm.generate([[]], max_new_tokens=2)
    with pytest.raises(ValueError, match="no tokenizer"):
        tiny_llm.generate("text needs a tokenizer", max_new_tokens=2)
    with pytest.raises(ValueError, match="max_seq_length"):
        ff.LLM(str(tiny_llm.path)).compile(ff.GenerationConfig(), max_seq_length=100000)
    with pytest.raises(ValueError, match="max_tokens_per_batch"):
        ff.LLM(str(tiny_llm.path)).compile(ff.GenerationConfig(), max_tokens_per_batch=0)
    still_works(tiny_llm, reference_tokens)


def test_generate_before_compile(runtime, tiny_dir):
    with pytest.raises(ff.StateError, match="compile"):
        ff.LLM(str(tiny_dir)).generate([1, 2], max_new_tokens=2)


def test_memory_pool_too_small_names_the_setting(runtime, tiny_llm, reference_tokens, tmp_path):
    long_ctx = make_tiny_llama(tmp_path / "long", max_position_embeddings=1 << 22)
    llm = ff.LLM(str(long_ctx), data_type=ff.DataType.DT_FLOAT)
    # 2 layers x K,V x R requests x 4M positions x 64 floats: 16 GiB with R = 4, more than the
    # system pool; on the GPU backend the framebuffer pool is the limit, so R = 4096 (16 TiB).
    gpu = runtime["num_gpus"] > 0
    requests = 4096 if gpu else 4
    kv_mib = (2 * 2 * requests * (1 << 22) * 64 * 4) >> 20
    setting = "memory_per_gpu" if gpu else "system_memory"
    with pytest.raises(ff.OutOfMemoryError, match=rf"KV cache {kv_mib} MiB.*{setting}"):
        llm.compile(ff.GenerationConfig(), max_requests_per_batch=requests, max_seq_length=1 << 22)
    still_works(tiny_llm, reference_tokens)
    with pytest.raises(ValueError, match=r"max_requests_per_batch must be in \[1, 4096\]"):
        llm.compile(ff.GenerationConfig(), max_requests_per_batch=5000)


def test_init_rejects_bad_settings(runtime):
    with pytest.raises(ff.InvalidArgumentError, match="unknown ff.init.. key.*num_gpu"):
        ff.init(num_gpu=1)
    with pytest.raises(ff.InvalidArgumentError, match="num_cpus"):
        ff.init(num_cpus=-1)
    with pytest.raises(ff.InvalidArgumentError, match="not both"):
        ff.init({"num_cpus": 2}, num_cpus=2)
    with pytest.raises(ff.StateError, match="different settings.*num_cpus"):
        ff.init(**{**RUNTIME_ARGS, "num_cpus": runtime["num_cpus"] + 1})
    with pytest.raises(ff.UnsupportedModelError, match=r"num_gpus=2.*one GPU per process"):
        ff.init(num_gpus=2)
    # The same settings again: a no-op that returns them.
    assert ff.init(**RUNTIME_ARGS) == runtime


def test_num_gpus_without_a_gpu_is_refused_before_legion_starts():
    """On a machine without a usable GPU (or a build without the GPU backend), asking for one
    fails with the reason, in a fresh process, and nothing starts; num_gpus=0 still works there."""
    info = ff.gpu_info()
    if info["built"] and info["devices"] > 0:
        pytest.skip(f"this machine has a GPU ({info['name']}): tests/test_gpu.py covers num_gpus=1")
    code = ("import flexflow_spec as ff, sys\n"
            "try:\n    ff.init(num_gpus=1)\nexcept ff.UnsupportedModelError as e:\n"
            "    print('REFUSED', e)\n    assert not ff.runtime.settings()\n"
            "    ff.init(num_cpus=1, system_memory=256); print('CPU OK')\n    sys.exit(0)\n"
            "sys.exit(3)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "REFUSED ff.init(num_gpus=1): " in out.stdout and "CPU OK" in out.stdout, out.stdout
    # The reason names what is missing: the backend, or a GPU the CUDA runtime can use.
    assert info["why"] and info["why"] in out.stdout, (info, out.stdout)


def test_head_dim_the_gpu_attention_lacks(runtime, tmp_path, tiny_llm, reference_tokens):
    """On the GPU backend, a head dim its attention kernel has no variant for (24) is refused
    by compile(), naming it, before anything is placed; the CPU backend runs any head dim.
    Either way the other models keep working."""
    d = make_tiny_llama(tmp_path / "hd24", hidden_size=96, num_attention_heads=4, num_key_value_heads=2)
    llm = ff.LLM(str(d), data_type=ff.DataType.DT_FLOAT)
    if runtime["num_gpus"]:
        with pytest.raises(ff.UnsupportedModelError, match="head_dim 24"):
            llm.compile(ff.GenerationConfig(), max_requests_per_batch=1, max_seq_length=32)
    else:
        llm.compile(ff.GenerationConfig(), max_requests_per_batch=1, max_seq_length=32)
        assert len(llm.generate([1, 2, 3], max_new_tokens=4, ignore_eos=True).output_tokens) == 4
    still_works(tiny_llm, reference_tokens)


def test_step_token_limit_of_the_gpu_backend(runtime, tmp_path, tiny_llm, reference_tokens):
    """The GPU kernels put a step's tokens on a grid dimension CUDA caps at 65535: compile()
    refuses a larger max_tokens_per_batch there, naming it and the limit, before anything is
    placed. The CPU backend has no such limit. Either way the other models keep working."""
    llm = ff.LLM(str(make_tiny_llama(tmp_path / "wide")), data_type=ff.DataType.DT_FLOAT)
    limits = dict(max_requests_per_batch=1, max_seq_length=32, max_tokens_per_batch=65536)
    if runtime["num_gpus"]:
        with pytest.raises(ff.UnsupportedModelError, match="max_tokens_per_batch 65536 exceeds 65535"):
            llm.compile(ff.GenerationConfig(), **limits)
    else:
        llm.compile(ff.GenerationConfig(), **limits)
        assert len(llm.generate([1, 2, 3], max_new_tokens=4, ignore_eos=True).output_tokens) == 4
    still_works(tiny_llm, reference_tokens)


# ---- Logits that hold NaN or +inf: that request fails, saying so; the others go on ----------

NF_NEW = 10


@pytest.fixture(scope="module")
def nan_case(tiny_llm, tiny_dir, tmp_path_factory):
    """A copy of the tiny model whose embedding row of one token t is NaN: a request whose
    tokens include t gets NaN logits from then on (an overflow would do the same). The victim:
    a prompt without t whose clean greedy output generates t as its k-th token (0-based), so it
    fails at generated token k + 1. Bystanders: prompts whose clean runs never meet t, with
    their clean outputs."""
    import numpy as np
    rng = np.random.default_rng(3)
    prompts = [rng.integers(3, 96, int(n)).tolist() for n in rng.integers(3, 12, 24)]
    outs = [r.output_tokens for r in tiny_llm.generate(prompts, max_new_tokens=NF_NEW, ignore_eos=True)]
    for p, o in zip(prompts, outs):
        for k in range(1, NF_NEW - 2):
            t = o[k]
            if t in p or t in o[:k]:
                continue
            bystanders = [(q, r) for q, r in zip(prompts, outs) if t not in q and t not in r]
            if len(bystanders) >= 3:
                d = copy_ckpt(tiny_dir, tmp_path_factory.mktemp("nan") / "m")

                def edit(ts, t=t):
                    ts["model.embed_tokens.weight"][t] = float("nan")

                _rewrite_safetensors(tiny_dir, d, edit)
                return dict(dir=d, t=t, victim=(p, o), k=k, bystanders=bystanders[:3])
    pytest.fail("no prompt of the tiny model generates a token that the others never meet")


def _tiny_limits(**kw):
    return dict(dict(max_requests_per_batch=2, max_seq_length=32, max_tokens_per_batch=8), **kw)


def test_non_finite_logits_fail_only_their_request(runtime, nan_case, tiny_llm, reference_tokens):
    """Greedy and sampled requests whose logits hold NaN fail with NumericalError naming the
    generated token; requests batched with them (one taking the failed request's slot) give
    their clean outputs, and the model keeps serving. Before this, argmax took a NaN at index 0
    as the maximum and otherwise skipped NaNs: wrong tokens, silently."""
    c = nan_case
    llm = ff.LLM(str(c["dir"]), data_type=ff.DataType.DT_FLOAT)
    llm.compile(ff.GenerationConfig(), **_tiny_limits())
    prompts = [c["victim"][0]] + [q for q, _ in c["bystanders"]]
    with pytest.raises(ff.NumericalError, match=rf"logits for generated token {c['k'] + 1} hold NaN or \+inf") as e:
        llm.generate(prompts, max_new_tokens=NF_NEW, ignore_eos=True)
    assert isinstance(e.value, ArithmeticError)
    results = e.value.results
    assert results[0] is None
    assert [r.output_tokens for r in results[1:]] == [r for _, r in c["bystanders"]]
    # t in the prompt: the first token already has no answer, greedy or sampled (untruncated,
    # top-k, top-p).
    configs = [ff.GenerationConfig(), ff.GenerationConfig(do_sample=True, temperature=0.9, seed=1),
               ff.GenerationConfig(do_sample=True, topk=20, seed=2),
               ff.GenerationConfig(do_sample=True, topp=0.8, seed=3)]
    for gc in configs:
        with pytest.raises(ff.NumericalError, match="logits for generated token 0 hold NaN"):
            llm.generate([5, c["t"], 6], max_new_tokens=3, generation_config=gc)
    q, r = c["bystanders"][0]
    assert llm.generate(q, max_new_tokens=NF_NEW, ignore_eos=True).output_tokens == r
    still_works(tiny_llm, reference_tokens)


def _speculative(llm_dir, ssm_dir, ssm_dtype):
    ssm = ff.SSM(str(ssm_dir), data_type=ssm_dtype)
    ssm.compile(ff.GenerationConfig(), **_tiny_limits(max_requests_per_batch=3, max_tokens_per_batch=32))
    llm = ff.LLM(str(llm_dir), data_type=ff.DataType.DT_FLOAT)
    llm.compile(ff.GenerationConfig(), **_tiny_limits(max_tokens_per_batch=64), ssms=[ssm],
                speculation=ff.SpeculationConfig.chain(4))
    return llm, ssm


def test_non_finite_logits_of_a_speculative_llm(runtime, nan_case, tiny_dir):
    """The LLM holds the NaN row and its SSM is the clean model (it drafts t, the LLM accepts
    it, and the row after t has no answer): the victim fails naming the same generated token
    as without speculation; the bystanders give their incremental outputs."""
    c = nan_case
    llm, ssm = _speculative(c["dir"], tiny_dir, ff.DataType.DT_FLOAT)
    prompts = [c["victim"][0]] + [q for q, _ in c["bystanders"]]
    with pytest.raises(ff.NumericalError, match=rf"logits for generated token {c['k'] + 1} hold NaN") as e:
        llm.generate(prompts, max_new_tokens=NF_NEW, ignore_eos=True)
    assert e.value.results[0] is None
    assert [r.output_tokens for r in e.value.results[1:]] == [r for _, r in c["bystanders"]]


def test_non_finite_logits_of_an_ssm_only_cost_its_drafts(runtime, nan_case, tiny_dir):
    """The SSM holds the NaN row: its rows after t propose nothing, so the victim (and the
    bystanders) still get exactly the LLM's incremental output, and after t each LLM step emits
    exactly one token (nothing drafted to accept), where before t the SSM (the same weights)
    is always right."""
    c = nan_case
    llm, ssm = _speculative(tiny_dir, c["dir"], ff.DataType.DT_FLOAT)
    prompts = [c["victim"][0]] + [q for q, _ in c["bystanders"]]
    res = llm.generate(prompts, max_new_tokens=NF_NEW, ignore_eos=True)
    assert [r.output_tokens for r in res] == [c["victim"][1]] + [r for _, r in c["bystanders"]]
    victim = res[0]
    emitted, after_t = 0, []
    for n in victim.accepted_tokens:
        if emitted > c["k"]:  # this step's context holds t
            after_t.append(n)
        emitted += n
    assert after_t and all(n == 1 for n in after_t), victim.accepted_tokens
