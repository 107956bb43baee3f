"""On a GPU: flexflow_spec through Legion (ff.init(num_gpus=1)) against transformers `generate`
(eager, and with a static cache + torch.compile), same random LLaMA-shaped weights, same run.

    python3 benchmarks/bench_gpu.py [--models 1b,7b] [--batch 1 8 32] [--prompt-len 512]
                                    [--new-tokens 64] [--dtype fp16] [--no-compile] [--json FILE]

Weights: a LlamaForCausalLM with random weights made on the GPU (TinyLlama-1.1B's or
Llama-2-7B's dimensions), saved as safetensors in --workdir; flexflow_spec loads that
checkpoint. Prompts are random token ids (EOS ignored), so both sides do the same work.

Reported per (model, batch): decode tokens/s (tokens after the first over the time they
took: total latency minus the 1-token latency), ms per step, and for flexflow_spec the
Legion overhead: 1 - (time inside the step tasks) / (launch-to-result time), from
LLM.stats(). Best of --repeats.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32),
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
}


def make_checkpoint(name: str, workdir: Path, torch_dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    path = workdir / f"random-llama-{name}"
    cfg = dict(vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
               tie_word_embeddings=False, initializer_range=0.02, bos_token_id=1, eos_token_id=2)
    cfg.update(SHAPES[name])
    if (path / "config.json").exists():
        return path
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**cfg)).to(torch_dtype).eval()
    model.save_pretrained(str(path), safe_serialization=True)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return path


def prompts_for(batch: int, prompt_len: int, vocab: int) -> list[list[int]]:
    import random
    rng = random.Random(batch)
    return [[rng.randrange(3, vocab) for _ in range(prompt_len)] for _ in range(batch)]


def timed(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_ours(path: Path, batches, prompt_len, new_tokens, repeats, dtype_name):
    import flexflow_spec as ff
    dt = {"fp16": ff.DataType.DT_HALF, "bf16": ff.DataType.DT_BFLOAT16, "fp32": ff.DataType.DT_FLOAT}[dtype_name]
    llm = ff.LLM(str(path), data_type=dt)
    t0 = time.perf_counter()
    llm.compile(ff.GenerationConfig(), max_requests_per_batch=max(batches),
                max_seq_length=prompt_len + new_tokens + 8, max_tokens_per_batch=max(prompt_len, max(batches)))
    load_s = time.perf_counter() - t0
    out = {}
    for b in batches:
        ps = prompts_for(b, prompt_len, 32000)
        llm.generate(ps, max_new_tokens=4, ignore_eos=True)  # warm-up
        pre = timed(lambda ps=ps: llm.generate(ps, max_new_tokens=1, ignore_eos=True), repeats)
        s0 = llm.stats()
        total = timed(lambda ps=ps: llm.generate(ps, max_new_tokens=new_tokens, ignore_eos=True), repeats)
        s1 = llm.stats()
        wall = s1["wall_ms"] - s0["wall_ms"]
        compute = s1["compute_ms"] - s0["compute_ms"]
        decode_s = total - pre
        out[b] = dict(decode_tok_s=b * (new_tokens - 1) / decode_s, ms_per_step=decode_s / (new_tokens - 1) * 1e3,
                      first_token_ms=pre * 1e3, legion_overhead=1 - compute / wall if wall > 0 else None,
                      steps=s1["steps"] - s0["steps"])
    return dict(load_s=load_s, results=out)


def bench_hf(path: Path, batches, prompt_len, new_tokens, repeats, torch_dtype, compiled: bool):
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, device_map="cuda").eval()
    if compiled:
        model.generation_config.cache_implementation = "static"
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
    out = {}
    for b in batches:
        ids = torch.tensor(prompts_for(b, prompt_len, 32000), device="cuda")
        mask = torch.ones_like(ids)

        def gen(n, ids=ids, mask=mask):
            with torch.no_grad():
                r = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                   do_sample=False, pad_token_id=0)
            torch.cuda.synchronize()
            return r

        gen(new_tokens)  # warm-up (and compilation)
        pre = timed(lambda: gen(1), repeats)
        total = timed(lambda: gen(new_tokens), repeats)
        decode_s = total - pre
        out[b] = dict(decode_tok_s=b * (new_tokens - 1) / decode_s, ms_per_step=decode_s / (new_tokens - 1) * 1e3,
                      first_token_ms=pre * 1e3)
    model = None  # noqa: F841 - freed before the next model is made
    gc.collect()
    torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="1b,7b")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--no-compile", action="store_true", help="skip transformers + torch.compile")
    ap.add_argument("--workdir", default=os.environ.get("TMPDIR", "/tmp"))
    ap.add_argument("--json")
    args = ap.parse_args()
    import torch

    import flexflow_spec as ff
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    info = ff.gpu_info()
    if not info["built"] or info["devices"] == 0:
        raise SystemExit(f"no GPU backend or device: {info['why']}")
    report = dict(device=torch.cuda.get_device_name(0), date=time.strftime("%Y-%m-%d"), args=vars(args),
                  torch=torch.__version__, models={})
    workdir = Path(args.workdir)

    def save():  # after every stage: a run cut short by a time limit keeps what it measured
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))

    paths = {m: make_checkpoint(m, workdir, torch_dtype) for m in args.models.split(",")}
    # transformers first (it frees the GPU afterwards), then ours: Legion takes its pool once.
    for m, path in paths.items():
        r = report["models"].setdefault(m, {})
        r["transformers_eager"] = bench_hf(path, args.batch, args.prompt_len, args.new_tokens, args.repeats,
                                           torch_dtype, False)
        if not args.no_compile:
            try:
                r["transformers_compiled"] = bench_hf(path, [1], args.prompt_len, args.new_tokens, args.repeats,
                                                      torch_dtype, True)
            except Exception as e:  # noqa: BLE001 - reported, the run goes on
                r["transformers_compiled"] = {"error": f"{type(e).__name__}: {e}"[:500]}
        print(json.dumps({m: r}, indent=1), flush=True)
        save()
    ff.init(num_gpus=1, num_cpus=4)
    for m, path in paths.items():
        report["models"][m]["flexflow_spec"] = bench_ours(path, args.batch, args.prompt_len, args.new_tokens,
                                                          args.repeats, args.dtype)
        print(json.dumps({m: report["models"][m]}, indent=1), flush=True)
        save()
    for m, r in report["models"].items():
        ours, hf = r["flexflow_spec"]["results"], r["transformers_eager"]
        for b in args.batch:
            print(f"{m} batch {b}: ours {ours[b]['decode_tok_s']:.1f} tok/s ({ours[b]['ms_per_step']:.2f} ms/step, "
                  f"Legion overhead {100 * (ours[b]['legion_overhead'] or 0):.1f}%), transformers eager "
                  f"{hf[b]['decode_tok_s']:.1f} tok/s: {ours[b]['decode_tok_s'] / hf[b]['decode_tok_s']:.2f}x")
    save()


if __name__ == "__main__":
    main()
