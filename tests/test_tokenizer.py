"""The C++ tokenizer against HF `tokenizers`: llama.cpp's vocab fixtures (ids HF produced),
SmolLM2 (tokenizer.json and GGUF) and Mistral's SentencePiece model (tokenizer.model and
its tokenizer.json) on a generated 100k-character multilingual corpus, whole and by line;
the C API's errors; streaming decode."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizer_corpus import SPECIALS, corpus
from tokenizer_fixtures import (
    converted_vocab_json,
    llama_cpp_vocab_dir,
    mistral_spm_dir,
    mistral_spm_hf_dir,
    read_vocab_tests,
)

import flexflow_spec as ff

# llama.cpp vocab fixtures with .inp/.out, and those we do not implement.
VOCAB_BPE_SPM = ["command-r", "deepseek-coder", "deepseek-llm", "falcon", "gpt-2", "llama-bpe", "llama-spm", "mpt",
                 "phi-3", "qwen2", "refact", "starcoder"]
VOCAB_SKIPPED = {"bert-bge": "WordPiece (BERT) vocabulary: not implemented (BPE only)"}


@pytest.fixture(scope="module")
def vocab_dir() -> Path:
    return llama_cpp_vocab_dir()


@pytest.mark.parametrize("name", VOCAB_BPE_SPM + sorted(VOCAB_SKIPPED))
def test_llama_cpp_vocab(vocab_dir, name):
    gguf = vocab_dir / f"ggml-vocab-{name}.gguf"
    if name in VOCAB_SKIPPED:
        with pytest.raises(ff.UnsupportedModelError, match="bert"):
            ff.Tokenizer(gguf)
        pytest.skip(VOCAB_SKIPPED[name])
    tok = ff.Tokenizer(gguf)
    cases = read_vocab_tests(gguf)
    assert len(cases) >= 40
    for text, want in cases:
        assert tok.encode(text, add_special_tokens=False) == want, (name, text)


def test_vocab_fixture_list_is_complete(vocab_dir):
    have = {p.name[len("ggml-vocab-"):-len(".gguf.inp")] for p in vocab_dir.glob("ggml-vocab-*.gguf.inp")}
    assert have == set(VOCAB_BPE_SPM) | set(VOCAB_SKIPPED)
    # Vocabularies without .inp/.out: those we implement load; the others are refused by name.
    assert ff.Tokenizer(vocab_dir / "ggml-vocab-gpt-neox.gguf").vocab_size == 50432
    with pytest.raises(ff.UnsupportedModelError, match="'t5'"):
        ff.Tokenizer(vocab_dir / "ggml-vocab-nomic-bert-moe.gguf")


# ---- corpus parity ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def text() -> str:
    return corpus(seed=1234)


def _hf_json(path: Path):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(path))


def _hf_spm(path: Path):
    pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(path)).backend_tokenizer


def _pairs(smollm2_dir, smollm2_gguf_path):
    return {
        "smollm2-json": (lambda: smollm2_dir / "tokenizer.json", lambda: _hf_json(smollm2_dir / "tokenizer.json")),
        # The fixture's tokenizer.json is the GGUF's tokenizer (digit split restored, see
        # flexflow_spec.fixtures), so both files must tokenize alike.
        "smollm2-gguf": (lambda: smollm2_gguf_path, lambda: _hf_json(smollm2_dir / "tokenizer.json")),
        "mistral-spm-model": (mistral_spm_dir, lambda: _hf_spm(mistral_spm_dir())),
        "mistral-spm-json": (lambda: mistral_spm_hf_dir() / "tokenizer.json",
                             lambda: _hf_json(mistral_spm_hf_dir() / "tokenizer.json")),
    }


@pytest.fixture(scope="module", params=["smollm2-json", "smollm2-gguf", "mistral-spm-model", "mistral-spm-json"])
def pair(request, smollm2_dir, smollm2_gguf_path):
    ours, ref = _pairs(smollm2_dir, smollm2_gguf_path)[request.param]
    return request.param, ff.Tokenizer(ours()), ref()


def test_corpus_whole(pair, text):
    name, ours, hf = pair
    assert len(text) >= 100_000
    for special in (True, False):
        want = hf.encode(text, add_special_tokens=special).ids
        got = ours.encode(text, add_special_tokens=special)
        assert got == want, (name, special, _first_diff(got, want))
        for skip in (False, True):
            assert ours.decode(got, skip_special_tokens=skip) == hf.decode(want, skip_special_tokens=skip)


def test_corpus_lines(pair, text):
    name, ours, hf = pair
    lines = text.splitlines(keepends=True)
    assert len(lines) > 1000
    for special in (True, False):
        wants = [e.ids for e in hf.encode_batch(lines, add_special_tokens=special)]
        for line, want in zip(lines, wants):
            got = ours.encode(line, add_special_tokens=special)
            assert got == want, (name, line)
            assert ours.decode(got) == hf.decode(want, skip_special_tokens=False), (name, line)


def test_specials_and_vocab(pair):
    name, ours, hf = pair
    assert ours.vocab_size == hf.get_vocab_size(with_added_tokens=True)
    for s in SPECIALS:
        assert ours.encode(s) == hf.encode(s).ids, (name, s)
        ids = hf.encode("x" + s + "y").ids
        assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


def _first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i, a[max(0, i - 3):i + 5], b[max(0, i - 3):i + 5]
    return min(len(a), len(b)), len(a), len(b)


# ---- errors -----------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(ff.ModelNotFoundError, match="nowhere"):
        ff.Tokenizer(tmp_path / "nowhere")
    with pytest.raises(ff.ModelNotFoundError, match="tokenizer.json, tokenizer.model"):
        ff.Tokenizer(tmp_path)


def test_malformed_json(tmp_path):
    p = tmp_path / "tokenizer.json"
    p.write_text('{"model": {"type": "BPE", "vocab": {"a": 0}, ')
    with pytest.raises(ff.CheckpointError, match="tokenizer.json: invalid JSON"):
        ff.Tokenizer(p)
    p.write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a c"]}}))
    with pytest.raises(ff.CheckpointError, match="merge 'a c'"):
        ff.Tokenizer(p)


def test_unsupported(tmp_path):
    p = tmp_path / "tokenizer.json"
    p.write_text(json.dumps({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}))
    with pytest.raises(ff.UnsupportedModelError, match="model type 'Unigram'"):
        ff.Tokenizer(p)
    split = {"type": "Split", "pattern": {"Regex": "(?<=a)b"}, "behavior": "Isolated"}
    p.write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": split}))
    with pytest.raises(ff.UnsupportedModelError, match=r"\(\?<=a\)b"):
        ff.Tokenizer(p)


def test_decode_skips_ids_without_token(smollm2_dir):
    """Models often have more embedding rows than tokens: an id with no token is skipped in
    decode, as HF does, instead of failing a finished request."""
    tok, hf = ff.Tokenizer(smollm2_dir / "tokenizer.json"), _hf_json(smollm2_dir / "tokenizer.json")
    ids = tok.encode("Hello world") + [tok.vocab_size + 5] + tok.encode(" again")
    assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=False) == "Hello world again"


def test_malformed_files_fail_cleanly(tmp_path):
    """Hostile tokenizer.json contents end in a clear error, never a crash or a runaway."""
    def write(pattern=None, vocab=None, added=None):
        cfg = {"model": {"type": "BPE", "vocab": vocab or {"a": 0, "b": 1}, "merges": []}}
        if pattern is not None:
            cfg["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated"}
        if added is not None:
            cfg["added_tokens"] = added
        p = tmp_path / f"case{len(list(tmp_path.iterdir()))}.json"
        p.write_text(json.dumps(cfg))
        return p
    cases = [(write(pattern="(" * 20000 + "a" + ")" * 20000), ff.UnsupportedModelError, "nested deeper"),
             (write(pattern="(?:a*)*"), ff.UnsupportedModelError, "empty string"),
             (write(pattern="a{99999999999}"), ff.UnsupportedModelError, "repeat count"),
             (write(vocab={"a": 0, "b": 300_000_000}), ff.CheckpointError, "far above"),
             (write(vocab={"a": 0, "b": 1e12}), ff.CheckpointError, "whole number"),
             (write(added=[{"id": -1, "content": "QQ", "special": True}]), ff.CheckpointError, "added token id")]
    for path, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            ff.Tokenizer(path)


def test_tiny_regex_and_added_token_rules(tmp_path):
    """Hand-made tokenizer.json exercising lstrip/rstrip/single_word and a custom Split regex."""
    from tokenizers import Tokenizer
    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz ĠXY.")}
    cfg = {
        "version": "1.0",
        "added_tokens": [
            {"id": 31, "content": "<m>", "single_word": False, "lstrip": True, "rstrip": True, "normalized": False,
             "special": True},
            {"id": 32, "content": "cat", "single_word": True, "lstrip": False, "rstrip": False, "normalized": True,
             "special": False},
        ],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "[a-c]{2,3}?|(?i:X+)|\\s+$"}, "behavior": "MergedWithNext",
             "invert": False},
            {"type": "Punctuation", "behavior": "Contiguous"}]},
        "post_processor": None, "decoder": None,
        "model": {"type": "BPE", "vocab": vocab, "merges": [], "unk_token": None, "byte_fallback": False},
    }
    p = tmp_path / "tokenizer.json"
    p.write_text(json.dumps(cfg))
    ours, hf = ff.Tokenizer(p), Tokenizer.from_file(str(p))
    for s in ["abcabc x <m>  cat catalog concat.. ..", "ＡＢＣ xX  ", "   <m>cat<m>", "a cat. (cat) cats", ""]:
        assert ours.encode(s) == hf.encode(s).ids, s
        ids = hf.encode(s).ids
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False)


# ---- streaming decode -------------------------------------------------------------------

def test_stream_decoder_cpp_suite(smollm2_dir, smollm2_gguf_path):
    """StreamDecoder is C++ only: tests/cpp/test_tokenizer streams encoded texts and random
    ids (byte tokens splitting characters, specials) through it for each tokenizer."""
    import os
    import re
    import subprocess
    root = Path(__file__).resolve().parents[1]
    dirs = [Path(os.environ["FFS_BUILD_DIR"])] if os.environ.get("FFS_BUILD_DIR") else [root / "build"]
    exe = next((e for d in dirs for e in sorted(d.glob("**/tests/cpp/test_tokenizer"))), None)
    if exe is None:
        pytest.fail("tests/cpp/test_tokenizer not found under build/ (or FFS_BUILD_DIR): build the project first")
    args = [smollm2_dir / "tokenizer.json", smollm2_gguf_path, mistral_spm_dir(),
            mistral_spm_hf_dir() / "tokenizer.json"]
    out = subprocess.run([str(exe)] + [str(a) for a in args], capture_output=True, text=True, timeout=300)
    m = re.search(r"(\d+) passed, (\d+) failed", out.stdout)
    assert m, out.stdout + out.stderr
    assert out.returncode == 0 and int(m.group(2)) == 0, out.stdout
    assert int(m.group(1)) >= 400


# ---- tokenizer.json of other families ----------------------------------------------------

# transformers writes a tokenizer.json from each of these GGUF vocabularies (the other
# fixtures' architectures it cannot convert): ours reading that file must equal HF reading it.
JSON_FAMILIES = ["qwen2", "llama-bpe", "gpt-2", "starcoder", "falcon", "deepseek-coder", "deepseek-llm", "phi-3",
                 "llama-spm"]


@pytest.mark.parametrize("name", JSON_FAMILIES)
def test_tokenizer_json_families(vocab_dir, name):
    path = converted_vocab_json(vocab_dir, name)
    ours, hf = ff.Tokenizer(path), _hf_json(path)
    text = corpus(seed=99)
    lines = text.split("\n")
    assert [ours.encode(t, add_special_tokens=False) for t in lines] == \
        [e.ids for e in hf.encode_batch(lines, add_special_tokens=False)]
    want = hf.encode(text).ids
    assert ours.encode(text) == want
    assert ours.decode(want) == hf.decode(want, skip_special_tokens=False)
