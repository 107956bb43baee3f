"""The spec_infer and incr_decoding programs end to end on SmolLM2, as FlexFlow Serve's users
run them: output file format, prompt tokenization equal to Hugging Face's, generated tokens
equal to the Python API's; bad flags and missing files exit non-zero with one line naming
the problem."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import flexflow_spec as ff
from conftest import PROMPTS, make_tiny_llama

REPO = Path(__file__).resolve().parents[1]
N_NEW = 24
LEGION = ["-ll:cpu", "2", "-ll:util", "1", "-ll:csize", "3072"]
BIN_PROMPTS = PROMPTS[:3]


def binary(name: str) -> Path:
    """The build tree's program (build/inference/<name>/<name>), else the installed one."""
    for p in (REPO / "build" / "inference" / name / name, Path(ff.__file__).parent / "bin" / name):
        if p.exists():
            return p
    pytest.fail(f"{name} is not built: run `pip install .` (it builds build/inference/{name}/{name})")


def run(name: str, *args, check_ok: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(binary(name)), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check_ok and proc.returncode != 0:
        pytest.fail(f"{name} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


PROFILE = re.compile(r"^\[Profile\] guid\((\d+)\) llm_decoding_steps\((\d+)\) latency\((\d+)\) ttft\((\d+)\)$")


def parse_output(path: Path) -> list[dict]:
    """Per request: the profile line, `token IDs: ...`, then the text (which may span lines)."""
    records, cur = [], None
    for line in path.read_text(encoding="utf-8").split("\n"):
        m = PROFILE.match(line)
        if m:
            cur = dict(guid=int(m[1]), steps=int(m[2]), latency=int(m[3]), ttft=int(m[4]), ids=None, text=[])
            records.append(cur)
        elif cur is not None and cur["ids"] is None:
            assert line.startswith("token IDs: "), f"expected the token IDs line, got {line!r}"
            cur["ids"] = [int(t) for t in line[len("token IDs: "):].split(", ")]
        elif cur is not None:
            cur["text"].append(line)
    for r in records:
        r["text"] = "\n".join(r["text"]).rstrip("\n")
    return records


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("bin") / "prompts.json"
    p.write_text(json.dumps(BIN_PROMPTS))
    return p


@pytest.fixture(scope="module")
def reference(smollm2, smollm2_tokenizer):
    """The Python API's greedy output for the same prompts (itself tested equal to HF)."""
    res = smollm2.generate(BIN_PROMPTS, max_new_tokens=N_NEW)
    return [(r.input_tokens, r.output_tokens, r.output_text) for r in res]


def check_records(records, reference, prompts):
    assert len(records) == len(prompts)
    assert len({r["guid"] for r in records}) == len(records)
    for rec, (inp, out, text), prompt in zip(records, reference, prompts):
        assert rec["ids"] == inp + out, "prompt tokenization or generated tokens differ from the Python API"
        assert rec["text"] == (prompt + text).rstrip("\n")
        assert 1 <= rec["steps"] <= len(out)
        assert 0 < rec["ttft"] <= rec["latency"]


def test_incr_decoding_matches_python_api(smollm2_dir, prompt_file, reference, tmp_path):
    out = tmp_path / "incr.txt"
    proc = run("incr_decoding", *LEGION, "-llm-model", smollm2_dir, "-prompt", prompt_file, "-output-file", out,
               "--use-full-precision", "--max-requests-per-batch", 2, "--max-tokens-per-batch", 64,
               "--max-sequence-length", 256, "--max-new-tokens", N_NEW)
    records = parse_output(out)
    check_records(records, reference, BIN_PROMPTS)
    assert all(r["steps"] == N_NEW for r in records)  # one token per step
    assert "[Profile]" in proc.stdout


def test_spec_infer_two_ssms_matches_python_api(smollm2_dir, smollm2_gguf_path, prompt_file, reference, tmp_path):
    rnd = make_tiny_llama(tmp_path / "random_ssm", vocab_size=49152, hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=8192, eos_token_id=2)
    out = tmp_path / "spec.txt"
    run("spec_infer", *LEGION, "-llm-model", smollm2_dir, "-ssm-model", smollm2_gguf_path, "-ssm-model", rnd,
        "-prompt", prompt_file, "-output-file", out, "--use-full-precision", "--max-requests-per-batch", 3,
        "--max-tokens-per-batch", 256, "--max-sequence-length", 256, "--max-new-tokens", N_NEW, "--verbose")
    records = parse_output(out)
    check_records(records, reference, BIN_PROMPTS)
    # The Q4_1 SSM guesses well: far fewer LLM steps than tokens.
    assert sum(r["steps"] for r in records) * 2 <= N_NEW * len(records)


def test_spec_infer_chain(smollm2_dir, smollm2_gguf_path, prompt_file, reference, tmp_path):
    out = tmp_path / "chain.txt"
    run("spec_infer", *LEGION, "-llm-model", smollm2_dir, "-ssm-model", smollm2_gguf_path, "-prompt", prompt_file,
        "-output-file", out, "--use-full-precision", "--expansion-degree", -1, "--max-new-tokens", N_NEW,
        "--max-requests-per-batch", 3, "--max-tokens-per-batch", 128)
    check_records(parse_output(out), reference, BIN_PROMPTS)


def test_help_lists_every_flag():
    flags = ["-llm-model", "-cache-folder", "-prompt", "-output-file", "--use-full-precision", "--verbose",
             "--max-requests-per-batch", "--max-tokens-per-batch", "--max-sequence-length",
             "-tensor-parallelism-degree", "-pipeline-parallelism-degree", "-ll:cpu", "-ll:gpu", "-ll:fsize",
             "-ll:zsize"]
    spec = run("spec_infer", "--help").stdout
    incr = run("incr_decoding", "--help").stdout
    for f in flags:
        assert f in spec and f in incr, f
    for f in ("-ssm-model", "--expansion-degree"):
        assert f in spec
    for f in ("--do-sample", "--temperature", "--topp"):
        assert f in incr


def one_error_line(proc, *needles):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_usage_exits_2(smollm2_dir, prompt_file):
    one_error_line(run("incr_decoding", "--no-such-flag", check_ok=False), "--no-such-flag")
    p = run("incr_decoding", "-llm-model", smollm2_dir, "-prompt", prompt_file, "--max-requests-per-batch", "many",
            check_ok=False)
    assert p.returncode == 2
    one_error_line(p, "--max-requests-per-batch", "many")
    one_error_line(run("spec_infer", "-llm-model", smollm2_dir, "-prompt", prompt_file, check_ok=False), "-ssm-model")
    one_error_line(run("incr_decoding", "-prompt", prompt_file, check_ok=False), "-llm-model")
    # No usable GPU: -ll:gpu 1 is refused with the reason; with one, two GPUs are.
    info = ff.gpu_info()
    n = "2" if info["built"] and info["devices"] > 0 else "1"
    p = run("incr_decoding", "-llm-model", smollm2_dir, "-prompt", prompt_file, "-ll:gpu", n, check_ok=False)
    assert p.returncode == 2
    one_error_line(p, "-ll:gpu", "GPU")


def test_missing_and_bad_files_exit_1(smollm2_dir, prompt_file, tmp_path):
    p = run("incr_decoding", "-llm-model", smollm2_dir, "-prompt", tmp_path / "nope.json", check_ok=False)
    assert p.returncode == 1
    one_error_line(p, str(tmp_path / "nope.json"))

    bad_prompts = tmp_path / "bad.json"
    bad_prompts.write_text('{"prompt": "not an array"}')
    one_error_line(run("incr_decoding", "-llm-model", smollm2_dir, "-prompt", bad_prompts, check_ok=False),
                   "array of strings")

    env_home = tmp_path / "home"
    proc = subprocess.run([str(binary("incr_decoding")), "-llm-model", "nobody/missing-model", "-prompt", prompt_file,
                           "-cache-folder", tmp_path / "cache"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(env_home), "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 1
    one_error_line(proc, "nobody/missing-model", str(tmp_path / "cache"), "huggingface-cli download")

    broken = tmp_path / "broken"
    shutil.copytree(smollm2_dir, broken, ignore=shutil.ignore_patterns("*.safetensors"))
    (broken / "config.json").write_text("{ not json")
    p = run("incr_decoding", *LEGION, "-llm-model", broken, "-prompt", prompt_file, check_ok=False)
    assert p.returncode == 1
    one_error_line(p, "config.json")


def test_console_entry_points():
    for name in ("spec_infer", "incr_decoding"):
        exe = shutil.which(name)
        if exe is None:
            pytest.skip(f"{name} console script is not on PATH (pip's script directory is not on PATH here)")
        proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "-llm-model" in proc.stdout


def test_gguf_digits_same_in_python_and_binary(runtime, smollm2_gguf_path, tmp_path):
    """A GGUF's own tokenizer (SmolLM2: digits split one by one) is used by both front ends;
    the prompt's ids equal HF `tokenizers` on the published tokenizer (see test_tokenizer)."""
    prompt = "List three prime numbers greater than 100: 101, 103,"
    llm = ff.LLM(str(smollm2_gguf_path), data_type=ff.DataType.DT_FLOAT)
    llm.compile(ff.GenerationConfig(), max_requests_per_batch=1, max_seq_length=64, max_tokens_per_batch=32)
    ref = llm.generate(prompt, max_new_tokens=8)
    assert len(ff.Tokenizer(smollm2_gguf_path).encode("100")) == 3  # one token per digit
    pf = tmp_path / "p.json"
    pf.write_text(json.dumps([prompt]))
    out = tmp_path / "o.txt"
    run("incr_decoding", *LEGION, "-llm-model", smollm2_gguf_path, "-prompt", pf, "-output-file", out,
        "--use-full-precision", "--max-new-tokens", 8, "--max-sequence-length", 64)
    (rec,) = parse_output(out)
    assert rec["ids"] == ref.input_tokens + ref.output_tokens
    assert rec["text"] == prompt + ref.output_text
