"""Incremental vs speculative decoding: SmolLM2-135M-Instruct (fp32, or --llm-dtype) as the LLM,
with SSMs (a) a tiny random LLaMA sharing its vocabulary, (b) SmolLM2 itself with fp16-rounded
weights, (c) both; chain and tree shapes. Greedy, so every run emits the same tokens (checked).
On the CPU by default; --num-gpus 1 runs every model on the GPU (Legion GPU tasks).

    python3 benchmarks/bench_speculative.py [--new-tokens 64] [--prompts 5] [--num-gpus 1]
                                            [--llm-dtype fp16]

Reports per configuration: tokens/s (sequential requests, batch 1), LLM steps per generated
token, mean tokens accepted per LLM step.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import flexflow_spec as ff  # noqa: E402
from conftest import PROMPTS, make_tiny_llama  # noqa: E402
from flexflow_spec.fixtures import smollm2_hf_dir  # noqa: E402

SHAPES = {
    "chain-4, fixed depth": ff.SpeculationConfig.chain(4, adaptive_depth=False),
    "chain-8, fixed depth": ff.SpeculationConfig.chain(8, adaptive_depth=False),
    "chain-8, adaptive depth": ff.SpeculationConfig.chain(8),
    "tree-specinfer (1,1,3) d8, fixed depth": ff.SpeculationConfig(adaptive_depth=False),
    "tree-specinfer (1,1,3) d8, adaptive depth": ff.SpeculationConfig(),
    "tree (2,2,2) d6, adaptive depth": ff.SpeculationConfig(max_depth=6, widths=(2, 2, 2), max_tree_tokens=32),
}


DTYPES = {"fp32": ff.DataType.DT_FLOAT, "fp16": ff.DataType.DT_HALF, "bf16": ff.DataType.DT_BFLOAT16}


def same_tokens(res, ref) -> str:
    """'yes', or where the first request that differs from incremental decoding diverges. fp32
    greedy must match (tests/test_speculative.py asserts it); in fp16/bf16 a verify step and a
    decode step round differently, so a near tie may flip, and the run reports it and goes on."""
    for i, (a, b) in enumerate(zip(res, ref)):
        if a.output_tokens != b.output_tokens:
            k = next((j for j, (x, y) in enumerate(zip(a.output_tokens, b.output_tokens)) if x != y),
                     min(len(a.output_tokens), len(b.output_tokens)))
            return f"no (prompt {i}, token {k})"
    return "yes"


def run(llm, prompts, n):
    t0 = time.perf_counter()
    res = [llm.generate(p, max_new_tokens=n, ignore_eos=True) for p in prompts]
    dt = time.perf_counter() - t0
    toks = sum(len(r.output_tokens) for r in res)
    steps = sum(r.llm_decoding_steps for r in res)
    return res, toks / dt, steps / toks, toks / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--num-gpus", type=int, default=0)
    ap.add_argument("--llm-dtype", default="fp32", choices=sorted(DTYPES))
    args = ap.parse_args()
    ff.init(num_cpus=2, system_memory=6144, num_gpus=args.num_gpus)
    llm_dt = DTYPES[args.llm_dtype]
    print(f"LLM SmolLM2-135M-Instruct {args.llm_dtype} on {'the GPU' if args.num_gpus else 'the CPU'}", flush=True)
    d = str(smollm2_hf_dir())
    prompts = PROMPTS[: args.prompts]
    tmp = Path(tempfile.mkdtemp())
    rand = make_tiny_llama(tmp / "rand", vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192)
    inc = ff.LLM(d, data_type=llm_dt)
    inc.compile(ff.GenerationConfig(), max_requests_per_batch=1, max_seq_length=256, max_tokens_per_batch=128)
    run(inc, prompts[:1], 8)  # warm-up
    ref, tps, spt, acc = run(inc, prompts, args.new_tokens)
    rows = [("incremental", "-", tps, spt, acc, "-")]
    del inc
    ssm_sets = (("(a) random tiny", ["rand"]), ("(b) SmolLM2 fp16", ["fp16"]), ("(c) both", ["rand", "fp16"]))
    for ssm_name, kinds in ssm_sets:
        for shape_name, shape in SHAPES.items():
            ssms = []
            for k in kinds:
                s = ff.SSM(str(rand) if k == "rand" else d,
                           data_type=ff.DataType.DT_FLOAT if k == "rand" else ff.DataType.DT_HALF)
                s.compile(ff.GenerationConfig(), max_requests_per_batch=1, max_seq_length=256, max_tokens_per_batch=128)
                ssms.append(s)
            llm = ff.LLM(d, data_type=llm_dt)
            llm.compile(ff.GenerationConfig(), max_requests_per_batch=1, max_seq_length=256, max_tokens_per_batch=128,
                        ssms=ssms, speculation=shape)
            res, tps, spt, acc = run(llm, prompts, args.new_tokens)
            rows.append((ssm_name, shape_name, tps, spt, acc, same_tokens(res, ref)))
            del llm, ssms
    print("| SSM | tree shape | tokens/s | LLM steps per token | tokens per LLM step | same tokens |")
    print("|---|---|---:|---:|---:|---|")
    for name, shape, tps, spt, acc, same in rows:
        print(f"| {name} | {shape} | {tps:.1f} | {spt:.3f} | {acc:.2f} | {same} |")


if __name__ == "__main__":
    main()
