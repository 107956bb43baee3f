"""Continuous batching: prompts generated together give exactly what each gives alone,
including prompts longer than max_tokens_per_batch (chunked prefill)."""
from __future__ import annotations

import threading

import flexflow_spec as ff
from conftest import PROMPTS


def test_batched_equals_alone_with_chunked_prefill(runtime, smollm2_dir, smollm2_tokenizer):
    llm = ff.LLM(str(smollm2_dir), data_type=ff.DataType.DT_FLOAT)
    # 16-token batches: every prompt below is prefilled in chunks, alongside others' decoding.
    llm.compile(ff.GenerationConfig(), max_requests_per_batch=3, max_seq_length=160, max_tokens_per_batch=16)
    long_prompt = ("In the beginning of the twentieth century, the small coastal town was known mostly for its "
                   "fishing fleet, its lighthouse, and a bakery whose bread")
    prompts = [long_prompt, PROMPTS[1], PROMPTS[2], PROMPTS[3], "Hi"]
    lengths = [len(smollm2_tokenizer(p)["input_ids"]) for p in prompts]
    assert max(lengths) > 16 and min(lengths) < 16
    alone = [llm.generate(p, max_new_tokens=24).output_tokens for p in prompts]
    # 5 requests with 3 slots: two wait and join as others finish.
    together = [r.output_tokens for r in llm.generate(prompts, max_new_tokens=24)]
    assert together == alone
    # Requests arriving from several threads at different times join running ones.
    out = [None] * len(prompts)

    def worker(i):
        out[i] = llm.generate(prompts[i], max_new_tokens=24).output_tokens

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == alone


def test_two_models_side_by_side(runtime, smollm2, tmp_path):
    """Two different models compiled and used in one process, concurrently."""
    from conftest import make_tiny_llama
    tiny = ff.LLM(str(make_tiny_llama(tmp_path / "tiny")), data_type=ff.DataType.DT_FLOAT)
    tiny.compile(ff.GenerationConfig(), max_requests_per_batch=1, max_seq_length=64, max_tokens_per_batch=16)
    ids = [1, 5, 9, 13]
    t_alone = tiny.generate(ids, max_new_tokens=12).output_tokens
    s_alone = smollm2.generate(ids, max_new_tokens=12).output_tokens
    res = {}
    th = threading.Thread(target=lambda: res.setdefault("tiny", tiny.generate(ids, max_new_tokens=12)))
    th.start()
    res["smol"] = smollm2.generate(ids, max_new_tokens=12)
    th.join()
    assert res["tiny"].output_tokens == t_alone
    assert res["smol"].output_tokens == s_alone


_PIPELINED = r'''
import json, sys, threading
import flexflow_spec as ff
cfg = json.loads(sys.argv[1])
ff.init(num_cpus=2, system_memory=2048, num_gpus=cfg["num_gpus"])
llm = ff.LLM(cfg["model"], data_type=ff.DataType.DT_FLOAT)
llm.compile(ff.GenerationConfig(), max_requests_per_batch=3, max_seq_length=160, max_tokens_per_batch=16)
out = {"together": [r.output_tokens for r in llm.generate(cfg["prompts"], max_new_tokens=24)]}
threaded = [None] * len(cfg["prompts"])
def worker(i):
    threaded[i] = llm.generate(cfg["prompts"][i], max_new_tokens=24).output_tokens
ts = [threading.Thread(target=worker, args=(i,)) for i in range(len(cfg["prompts"]))]
[t.start() for t in ts]
[t.join() for t in ts]
out["threaded"] = threaded
sampled = ff.GenerationConfig(do_sample=True, temperature=0.8, topp=0.9, seed=7)
out["sampled"] = llm.generate(cfg["prompts"][1], max_new_tokens=16, generation_config=sampled).output_tokens
r = llm.generate(cfg["prompts"][2], max_new_tokens=4, return_logits=True)
out["logits"] = [float(x) for x in r.logits[-1][:64]]
out["steps"] = llm.stats()["steps"]
del llm  # freed while its chain may still hold a prepared (empty) batch
print("RESULT " + json.dumps(out))
'''


def test_pipelined_driver_gives_the_same_tokens(runtime, smollm2_dir):
    """The pipelined driver (prepare tasks chained ahead of the steps; the default with GPUs)
    and the synchronous one give the same tokens for batched, chunked, threaded, sampled and
    return_logits requests, and a clean shutdown after freeing the model. This process runs
    one driver, a subprocess on the same backend the other."""
    import json
    import os
    import subprocess
    import sys
    llm = ff.LLM(str(smollm2_dir), data_type=ff.DataType.DT_FLOAT)
    llm.compile(ff.GenerationConfig(), max_requests_per_batch=3, max_seq_length=160, max_tokens_per_batch=16)
    prompts = ["In the beginning of the twentieth century, the small coastal town was known mostly for its "
               "fishing fleet", PROMPTS[1], PROMPTS[2], PROMPTS[3], "Hi"]
    alone = [llm.generate(p, max_new_tokens=24).output_tokens for p in prompts]
    sampled = llm.generate(prompts[1], max_new_tokens=16, generation_config=ff.GenerationConfig(
        do_sample=True, temperature=0.8, topp=0.9, seed=7)).output_tokens
    logits = [float(x) for x in llm.generate(prompts[2], max_new_tokens=4, return_logits=True).logits[-1][:64]]
    cfg = json.dumps({"model": str(smollm2_dir), "prompts": prompts, "num_gpus": runtime["num_gpus"]})
    here = os.environ.get("FFS_STEP_PIPELINE")
    pipelined_here = here != "0" if here else runtime["num_gpus"] > 0
    env = {**os.environ, "FFS_STEP_PIPELINE": "0" if pipelined_here else "1"}
    proc = subprocess.run([sys.executable, "-c", _PIPELINED, cfg], capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    got = json.loads(line[len("RESULT "):])
    assert got["together"] == alone
    assert got["threaded"] == alone
    assert got["sampled"] == sampled
    assert got["logits"] == logits  # the same computation: bit-identical
    assert got["steps"] > 0
