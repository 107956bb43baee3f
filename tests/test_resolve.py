"""Model names resolve the same way for Python and the binaries (one C++ lookup): a local
directory or .gguf, a Hugging Face id in the HF cache (refs/main's snapshot), then in our
cache folder; a miss names every place looked at."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import flexflow_spec as ff
from flexflow_spec.resolve import resolve_model


def _hub_repo(hub: Path, repo_id: str, model_dir: Path, revs: list[str], main: str | None) -> None:
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    for rev in revs:
        snap = repo / "snapshots" / rev
        snap.mkdir(parents=True)
        for f in model_dir.iterdir():
            (snap / f.name).symlink_to(f)  # the hub cache links snapshot files to blobs
    if main:
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(main)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in ("HF_HUB_CACHE", "HF_HOME", "FF_CACHE_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def test_local_paths(smollm2_dir, smollm2_gguf_path):
    assert resolve_model(str(smollm2_dir)) == smollm2_dir.resolve()
    assert resolve_model(str(smollm2_gguf_path)) == smollm2_gguf_path.resolve()


def test_hf_cache_refs_main(clean_env, tmp_path, smollm2_dir):
    hub = tmp_path / "hf" / "hub"
    _hub_repo(hub, "HuggingFaceTB/SmolLM2-135M-Instruct", smollm2_dir, ["aaaa", "bbbb"], main="aaaa")
    clean_env.setenv("HF_HOME", str(tmp_path / "hf"))
    got = resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert got == hub / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots" / "aaaa"
    # HF_HUB_CACHE wins over HF_HOME.
    other = tmp_path / "other-hub"
    _hub_repo(other, "HuggingFaceTB/SmolLM2-135M-Instruct", smollm2_dir, ["cccc"], main=None)
    clean_env.setenv("HF_HUB_CACHE", str(other))
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct").name == "cccc"


def test_our_cache_folder(clean_env, tmp_path, smollm2_dir, runtime):
    ours = tmp_path / "ffcache"
    (ours / "acme").mkdir(parents=True)
    (ours / "acme" / "tiny").symlink_to(smollm2_dir, target_is_directory=True)
    with pytest.raises(FileNotFoundError):
        resolve_model("acme/tiny")
    assert resolve_model("acme/tiny", cache_path=str(ours)) == smollm2_dir.resolve()
    clean_env.setenv("FF_CACHE_PATH", str(ours))
    assert resolve_model("acme/tiny") == smollm2_dir.resolve()
    # The API takes the id too, and loads the model.
    llm = ff.LLM("acme/tiny", data_type=ff.DataType.DT_FLOAT)
    assert llm.path == smollm2_dir.resolve()


def test_missing_names_every_place(clean_env, tmp_path):
    clean_env.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ff.ModelNotFoundError) as e:
        resolve_model("nobody/no-such-model", cache_path=str(tmp_path / "c"))
    msg = str(e.value)
    assert "nobody/no-such-model" in msg
    assert str(tmp_path / "hf" / "hub" / "models--nobody--no-such-model" / "snapshots") in msg
    assert str(tmp_path / "c" / "nobody" / "no-such-model") in msg
    assert "huggingface-cli download nobody/no-such-model" in msg
    with pytest.raises(ff.ModelNotFoundError, match="looked in: " + os.sep + "no"):
        resolve_model("/no/such/dir")
