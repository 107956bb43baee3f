"""Model name -> local path: a checkpoint directory, a .gguf file, or a Hugging Face id found
in the local Hugging Face cache or in our cache folder. The lookup is the C++ core's
(ffs_resolve_model), the same one the spec_infer / incr_decoding binaries use. When the id is
nowhere on disk and download=True, huggingface_hub fetches it into the Hugging Face cache
(with its progress bar), unless HF_HUB_OFFLINE=1; without a reachable hub the error says
where we looked."""
from __future__ import annotations

import os
from pathlib import Path

from ._lib import check, ffi, lib
from .errors import ModelNotFoundError

_PATH_MAX = 1 << 16


def cache_folder(cache_path: str = "") -> Path:
    """cache_path if given, else $FF_CACHE_PATH, else ~/.cache/flexflow_spec (the core's rule)."""
    buf = ffi.new("char[]", _PATH_MAX)
    check(lib.ffs_cache_folder(str(cache_path or "").encode(), buf, _PATH_MAX))
    return Path(ffi.string(buf).decode())


def _lookup(name: str, cache_path: str) -> Path:
    buf = ffi.new("char[]", _PATH_MAX)
    check(lib.ffs_resolve_model(name.encode(), str(cache_path or "").encode(), buf, _PATH_MAX))
    return Path(ffi.string(buf).decode())


def _download(name: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        path = snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "tokenizer.model", "*.txt"])
    except Exception:  # offline, unknown repo, gated: the lookup error explains what to do
        return None
    return Path(path)


def resolve_model(name: str | os.PathLike, cache_path: str = "", download: bool | None = None) -> Path:
    """download: None = try the hub unless HF_HUB_OFFLINE=1 (the test suite sets it, so tests
    never wait on a hub); True / False force it."""
    if not isinstance(name, (str, os.PathLike)) or not str(name):
        raise ModelNotFoundError(f"model name must be a non-empty path or id, got {name!r}")
    name = str(name)
    try:
        return _lookup(name, cache_path)
    except ModelNotFoundError:
        if download is None:
            download = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes")
        is_id = name.count("/") == 1 and not name.startswith(("/", ".", "~"))
        if download and is_id:
            got = _download(name)
            if got is not None and (got / "config.json").exists():
                return got
        raise
