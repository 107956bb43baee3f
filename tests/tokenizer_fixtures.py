"""Tokenizer fixtures, fetched once from PyPI with `pip download --no-deps` and cached under
~/.cache/flexflow_spec/fixtures (file-locked, like flexflow_spec.fixtures):
- llama.cpp's vocab-only GGUFs with input texts (.inp) and HF's ids for them (.out), from the
  llama-cpp-python source distribution (only the sdist is downloaded, nothing is built);
- Mistral's SentencePiece tokenizer.model (v1, LLaMA-2 style BPE with byte fallback) from
  the mistral-common wheel, plus the tokenizer.json transformers converts it to."""
from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from flexflow_spec.fixtures import _locked, fixtures_dir

LLAMA_CPP_SDIST = "llama-cpp-python==0.3.16"  # ships vendor/llama.cpp/models/ggml-vocab-*.gguf{,.inp,.out}
MISTRAL_COMMON = "mistral-common==1.13.1"


@contextlib.contextmanager
def _building(dest: Path):
    """Yields an empty dest.partial to fill; it replaces dest only when the block succeeds,
    so an interrupted fetch never leaves a half-made fixture behind."""
    part = dest.with_name(dest.name + ".partial")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    yield part
    shutil.rmtree(dest, ignore_errors=True)
    part.rename(dest)


def _pip_download(spec: str, dest: str, sdist: bool) -> None:
    base = [sys.executable, "-m", "pip", "download", "--no-deps", spec, "-d", dest]
    if sdist:
        name = spec.split("==")[0]
        base += ["--no-binary", name]
        # Preparing the sdist's metadata needs its build backend; use the installed one if any.
        r = subprocess.run(base + ["--no-build-isolation"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if r.returncode == 0:
            return
    subprocess.run(base, check=True, stdout=subprocess.DEVNULL)


def llama_cpp_vocab_dir() -> Path:
    dest = fixtures_dir() / "llama-cpp-vocab"
    with _locked(dest):
        if (dest / "done").exists():
            return dest
        with tempfile.TemporaryDirectory() as tmp:
            _pip_download(LLAMA_CPP_SDIST, tmp, sdist=True)
            sdist = next(Path(tmp).glob("*.tar.gz"))
            with _building(dest) as part, tarfile.open(sdist) as tf:
                for m in tf.getmembers():
                    name = Path(m.name).name
                    if m.isfile() and "/vendor/llama.cpp/models/" in m.name and name.startswith("ggml-vocab-"):
                        with tf.extractfile(m) as src, open(part / name, "wb") as out:
                            shutil.copyfileobj(src, out)
                (part / "done").write_text(LLAMA_CPP_SDIST)
    return dest


def read_vocab_tests(gguf: Path) -> list[tuple[str, list[int]]]:
    """(text, ids) pairs of a .inp/.out pair: texts separated by "\\n__ggml_vocab_test__\\n"
    (one after each text), one line of space-separated ids per text, add_special_tokens=False."""
    raw = Path(str(gguf) + ".inp").read_text(encoding="utf-8")
    texts = raw.split("\n__ggml_vocab_test__\n")
    if texts and texts[-1] == "":
        texts.pop()
    lines = Path(str(gguf) + ".out").read_text(encoding="utf-8").split("\n")
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


def mistral_spm_dir() -> Path:
    """A directory with Mistral's tokenizer.model (v1) and a LLaMA tokenizer_config.json."""
    dest = fixtures_dir() / "mistral-v1-spm"
    with _locked(dest):
        if (dest / "tokenizer.model").exists():
            return dest
        with tempfile.TemporaryDirectory() as tmp:
            _pip_download(MISTRAL_COMMON, tmp, sdist=False)
            wheel = next(Path(tmp).glob("*.whl"))
            with _building(dest) as part, zipfile.ZipFile(wheel) as z:
                member = next(n for n in z.namelist() if n.endswith("data/tokenizer.model.v1"))
                with z.open(member) as src, open(part / "tokenizer.model", "wb") as out:
                    shutil.copyfileobj(src, out)
                (part / "tokenizer_config.json").write_text(json.dumps({
                    "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
                    "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    return dest


def mistral_spm_hf_dir() -> Path:
    """The tokenizer.json (and config) transformers writes for the SentencePiece model."""
    src = mistral_spm_dir()
    dest = fixtures_dir() / "mistral-v1-spm-hf"
    with _locked(dest):
        if (dest / "tokenizer.json").exists():
            return dest
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(src))
        with _building(dest) as part:
            tok.save_pretrained(str(part))
    return dest


def converted_vocab_json(vocab_dir: Path, name: str) -> Path:
    """tokenizer.json written by transformers from ggml-vocab-<name>.gguf (slow: cached)."""
    dest = fixtures_dir() / "llama-cpp-vocab-json" / name
    with _locked(dest):
        if not (dest / "tokenizer.json").exists():
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(str(vocab_dir), gguf_file=f"ggml-vocab-{name}.gguf")
            with _building(dest) as part:
                tok.save_pretrained(str(part))
    return dest / "tokenizer.json"
