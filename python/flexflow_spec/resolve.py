"""Model name -> local path: a checkpoint directory, a .gguf file, or a HF id found in the
local Hugging Face cache or in our cache folder. Nothing is downloaded here."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelNotFoundError


def cache_folder(cache_path: str = "") -> Path:
    if cache_path:
        return Path(cache_path).expanduser()
    env = os.environ.get("FF_CACHE_PATH")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "flexflow_spec"


def _hf_hub_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    dirs.append(Path.home() / ".cache" / "huggingface" / "hub")
    return dirs


def resolve_model(name: str, cache_path: str = "") -> Path:
    if not isinstance(name, (str, os.PathLike)) or not str(name):
        raise ModelNotFoundError(f"model name must be a non-empty path or id, got {name!r}")
    p = Path(name).expanduser()
    if p.exists():
        return p.resolve()
    looked = [str(p)]
    if "/" in str(name) and not str(name).startswith(("/", ".", "~")):
        repo = "models--" + str(name).replace("/", "--")
        for hub in _hf_hub_dirs():
            snaps = hub / repo / "snapshots"
            looked.append(str(snaps))
            if snaps.is_dir():
                cands = sorted(snaps.iterdir(), key=lambda d: d.stat().st_mtime, reverse=True)
                for c in cands:
                    if (c / "config.json").exists():
                        return c.resolve()
        ours = cache_folder(cache_path) / "models" / str(name)
        looked.append(str(ours))
        if (ours / "config.json").exists():
            return ours.resolve()
    raise ModelNotFoundError(
        f"model {name!r} not found; looked in: {', '.join(looked)}. Give a local checkpoint directory "
        "(config.json + *.safetensors), a .gguf file, or download the model into the Hugging Face cache.")
