"""python -m flexflow_spec: speculative generation (default: SmolLM2-135M-Instruct as the LLM,
drafted by the same model with fp16-rounded weights), or incremental with --no-speculation."""
from __future__ import annotations

import argparse
import time

import flexflow_spec as ff


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m flexflow_spec", description=__doc__)
    ap.add_argument("--model", help="checkpoint directory, .gguf file or HF id (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--prompt", action="append", help="prompt (repeatable)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--do-sample", action="store_true")
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--topp", type=float, default=0.8)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--num-gpus", type=int, default=0, help="GPUs to run the models on (default: 0, the CPU)")
    ap.add_argument("--ssm", action="append", help="SSM checkpoint (repeatable; default: the model in fp16)")
    ap.add_argument("--no-speculation", action="store_true", help="incremental decoding only")
    return ap


def main() -> None:
    args = parser().parse_args()

    model = args.model
    if model is None:
        from flexflow_spec.fixtures import smollm2_gguf
        model = str(smollm2_gguf())
    init = {} if args.num_cpus is None else {"num_cpus": args.num_cpus}
    if args.num_gpus:
        init["num_gpus"] = args.num_gpus
    ff.init(**init)
    llm = ff.LLM(model, data_type=ff.DataType.DT_FLOAT)
    cfg = ff.GenerationConfig(do_sample=args.do_sample, temperature=args.temperature, topp=args.topp, seed=args.seed)
    prompts = args.prompt or ["Three tips for staying healthy are: "]
    limits = dict(max_requests_per_batch=max(1, len(prompts)), max_seq_length=512, max_tokens_per_batch=128)
    ssms = []
    if not args.no_speculation:
        for path in args.ssm or [model]:
            ssm = ff.SSM(path, data_type=ff.DataType.DT_HALF)
            ssm.compile(cfg, **limits)
            ssms.append(ssm)
    llm.compile(cfg, ssms=ssms, **limits)
    _ = llm.tokenizer  # built once, outside the timing
    t0 = time.perf_counter()
    results = llm.generate(prompts, max_new_tokens=args.max_new_tokens)
    dt = time.perf_counter() - t0
    n = 0
    for r in results:
        n += len(r.output_tokens)
        print(f"--- {r.input_text!r}\n{r.output_text}\n")
        print(f"[{len(r.output_tokens)} tokens in {r.llm_decoding_steps} LLM steps; tokens per step: "
              f"{r.accepted_tokens}]\n")
    print(f"[{n} tokens in {dt:.2f} s, {n / dt:.1f} tokens/s]")


if __name__ == "__main__":
    main()
