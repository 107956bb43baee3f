"""Legion's share of a decoding step: the synchronous driver against the pipelined one
(FFS_STEP_PIPELINE=1: prepare tasks chained ahead of the steps), SmolLM2-135M fp32, same run.

    python3 benchmarks/bench_step_overhead.py [--batch 1 4] [--new-tokens 64] [--runs 3] [--num-gpus 0]
                                              [--speculative]

--speculative: the LLM speculates with SmolLM2 itself in fp16 as its SSM (a close draft), so
a "step" is a draft step of the SSM or a verify step of the LLM, most of them small.

Each mode runs in its own process (Legion starts once per process), alternating, --runs
times. Per step: compute (inside the step task), wall (LLM.stats(): launch, or the previous
step's end, to result) and their difference, Legion's overhead; decode tokens/s from the
wall clock. Reported: the median over runs of each figure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r'''
import json, sys, time
import flexflow_spec as ff
from flexflow_spec.fixtures import smollm2_hf_dir
a = json.loads(sys.argv[1])
ff.init(num_cpus=2, system_memory=2048, num_gpus=a["num_gpus"])
llm = ff.LLM(str(smollm2_hf_dir()), data_type=ff.DataType.DT_FLOAT)
ssms = []
if a["speculative"]:
    ssms = [ff.SSM(str(smollm2_hf_dir()), data_type=ff.DataType.DT_HALF)]
    ssms[0].compile(ff.GenerationConfig(), max_requests_per_batch=max(a["batch"]), max_seq_length=320,
                    max_tokens_per_batch=64)
llm.compile(ff.GenerationConfig(), max_requests_per_batch=max(a["batch"]), max_seq_length=256,
            max_tokens_per_batch=64 if not ssms else 256, ssms=ssms)
p = "Three tips for staying healthy are: eat a balanced diet, sleep well, and"
llm.generate(p, max_new_tokens=4, ignore_eos=True)
out = {}
for b in a["batch"]:
    s0 = llm.stats(); t0 = time.perf_counter()
    llm.generate([p] * b, max_new_tokens=a["new_tokens"], ignore_eos=True)
    t = time.perf_counter() - t0; s1 = llm.stats()
    n = s1["steps"] - s0["steps"]
    out[b] = dict(compute_ms=(s1["compute_ms"] - s0["compute_ms"]) / n, wall_ms=(s1["wall_ms"] - s0["wall_ms"]) / n,
                  tok_s=b * a["new_tokens"] / t, steps=n)
print("RESULT " + json.dumps(out))
'''


def run(mode: str, args) -> dict:
    env = {**os.environ, "FFS_STEP_PIPELINE": "1" if mode == "pipelined" else "0"}
    cfg = json.dumps({"batch": args.batch, "new_tokens": args.new_tokens, "num_gpus": args.num_gpus,
                      "speculative": args.speculative})
    p = subprocess.run([sys.executable, "-c", CHILD, cfg], capture_output=True, text=True, env=env, timeout=900)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise SystemExit(f"{mode} run failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return {int(k): v for k, v in json.loads(line[7:]).items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--num-gpus", type=int, default=0)
    ap.add_argument("--speculative", action="store_true", help="SmolLM2 fp16 as the LLM's SSM")
    args = ap.parse_args()
    results = {"synchronous": [], "pipelined": []}
    for _ in range(args.runs):
        for mode in results:
            results[mode].append(run(mode, args))
    print(f"{'mode':12} {'batch':>5} {'steps':>5} {'compute ms':>11} {'wall ms':>8} {'gap ms':>7} {'overhead':>8} "
          f"{'tok/s':>7}")
    for mode, runs in results.items():
        for b in args.batch:
            med = {k: statistics.median(r[b][k] for r in runs) for k in ("compute_ms", "wall_ms", "tok_s", "steps")}
            gap = statistics.median(r[b]["wall_ms"] - r[b]["compute_ms"] for r in runs)
            ovh = statistics.median(1 - r[b]["compute_ms"] / r[b]["wall_ms"] for r in runs)
            print(f"{mode:12} {b:5d} {med['steps']:5.0f} {med['compute_ms']:11.2f} {med['wall_ms']:8.2f} "
                  f"{gap:7.3f} {100 * ovh:7.1f}% {med['tok_s']:7.1f}")


if __name__ == "__main__":
    main()
