"""Encode throughput of the C++ tokenizer (ff.Tokenizer) against HF `tokenizers`, single
thread, in the same run on the same machine, on the generated multilingual corpus of
tests/tokenizer_corpus.py, for SmolLM2's tokenizer.json and Mistral's SentencePiece model.

    python3 benchmarks/bench_tokenizer.py [--chars 1000000] [--repeats 5]

Both sides first encode the whole text once (their word caches warm up), then the best of
--repeats whole-text encodes is reported; ids are checked equal. MB = 10^6 bytes of UTF-8.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("RAYON_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def best_time(fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chars", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from tokenizer_corpus import corpus
    from tokenizer_fixtures import mistral_spm_dir
    from transformers import AutoTokenizer

    import flexflow_spec as ff
    from flexflow_spec.fixtures import smollm2_hf_dir

    text = corpus(seed=7, min_chars=args.chars)
    nbytes = len(text.encode("utf-8"))
    smol = smollm2_hf_dir()
    from tokenizers import Tokenizer as HfTokenizer
    cases = {
        "SmolLM2 (byte-level BPE, tokenizer.json)": (ff.Tokenizer(smol / "tokenizer.json"),
                                                     HfTokenizer.from_file(str(smol / "tokenizer.json"))),
        "Mistral v1 (SentencePiece BPE, tokenizer.model)": (ff.Tokenizer(mistral_spm_dir()),
                                                            AutoTokenizer.from_pretrained(
                                                                str(mistral_spm_dir())).backend_tokenizer),
    }
    rows = []
    for name, (ours, hf) in cases.items():
        t_ours, ids_ours = best_time(lambda o=ours: o.encode(text, add_special_tokens=False), args.repeats)
        t_hf, enc = best_time(lambda h=hf: h.encode(text, add_special_tokens=False), args.repeats)
        assert ids_ours == enc.ids, name
        n = len(ids_ours)
        rows.append(dict(tokenizer=name, tokens=n, mb=nbytes / 1e6,
                         ours_mb_s=nbytes / 1e6 / t_ours, ours_tok_s=n / t_ours,
                         hf_mb_s=nbytes / 1e6 / t_hf, hf_tok_s=n / t_hf))
    print(json.dumps(dict(machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                          chars=len(text), bytes=nbytes, rows=rows), indent=1))
    print("\n| tokenizer | tokens | ours MB/s | ours tokens/s | HF MB/s | HF tokens/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['tokenizer']} | {r['tokens']} | {r['ours_mb_s']:.2f} | {r['ours_tok_s']:.0f} | "
              f"{r['hf_mb_s']:.2f} | {r['hf_tok_s']:.0f} |")


if __name__ == "__main__":
    main()
