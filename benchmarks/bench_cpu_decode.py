"""Decode tokens/s and prefill time of SmolLM2-135M-Instruct on CPU (fp32), flexflow_spec
against transformers, in the same run on the same machine.

    python3 benchmarks/bench_cpu_decode.py [--new-tokens 64] [--batch 1 4] [--repeats 3]

Prefill time: latency of generating 1 token from the prompt. Decode tokens/s: tokens
generated after the first, divided by the time they took (total latency minus prefill),
summed over the batch. Best of --repeats. EOS is ignored so both sides do the same work.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

PROMPT = "Three tips for staying healthy are: eat a balanced diet, sleep well, and"


def bench_ours(model_dir, batch, new_tokens, repeats, num_cpus):
    import flexflow_spec as ff
    ff.init(num_cpus=num_cpus)
    llm = ff.LLM(str(model_dir), data_type=ff.DataType.DT_FLOAT)
    llm.compile(ff.GenerationConfig(), max_requests_per_batch=max(batch), max_seq_length=256,
                max_tokens_per_batch=256)
    out = {}
    for b in batch:
        prompts = [PROMPT] * b
        llm.generate(prompts, max_new_tokens=4, ignore_eos=True)  # warm-up
        best_pre, best_total = float("inf"), float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            llm.generate(prompts, max_new_tokens=1, ignore_eos=True)
            best_pre = min(best_pre, time.perf_counter() - t0)
            t0 = time.perf_counter()
            rs = llm.generate(prompts, max_new_tokens=new_tokens, ignore_eos=True)
            best_total = min(best_total, time.perf_counter() - t0)
            assert all(len(r.output_tokens) == new_tokens for r in rs)
        out[b] = dict(prefill_ms=best_pre * 1e3, decode_tok_s=b * (new_tokens - 1) / (best_total - best_pre))
    return out


def bench_hf(model_dir, batch, new_tokens, repeats):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = {}
    for b in batch:
        enc = tok([PROMPT] * b, return_tensors="pt")

        def gen(n, enc=enc):
            with torch.no_grad():
                return model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                      pad_token_id=tok.eos_token_id)

        gen(4)
        best_pre, best_total = float("inf"), float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            gen(1)
            best_pre = min(best_pre, time.perf_counter() - t0)
            t0 = time.perf_counter()
            gen(new_tokens)
            best_total = min(best_total, time.perf_counter() - t0)
        out[b] = dict(prefill_ms=best_pre * 1e3, decode_tok_s=b * (new_tokens - 1) / (best_total - best_pre))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-cpus", type=int, default=2, help="Legion CPU processors")
    args = ap.parse_args()
    from flexflow_spec.fixtures import smollm2_hf_dir
    model_dir = smollm2_hf_dir()
    import torch
    hf = bench_hf(model_dir, args.batch, args.new_tokens, args.repeats)
    ours = bench_ours(model_dir, args.batch, args.new_tokens, args.repeats, args.num_cpus)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"torch {torch.__version__} threads={torch.get_num_threads()}")
    print(f"{'batch':>5} {'ours prefill ms':>16} {'hf prefill ms':>14} {'ours tok/s':>11} {'hf tok/s':>9} "
          f"{'speedup':>8}")
    for b in args.batch:
        o, h = ours[b], hf[b]
        print(f"{b:>5} {o['prefill_ms']:>16.1f} {h['prefill_ms']:>14.1f} {o['decode_tok_s']:>11.1f} "
              f"{h['decode_tok_s']:>9.1f} {o['decode_tok_s'] / h['decode_tok_s']:>7.2f}x")
    print(json.dumps({"ours": ours, "transformers": hf}))


if __name__ == "__main__":
    main()
