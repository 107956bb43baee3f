"""ff.Tokenizer: the C++ tokenizer (byte-level BPE and SentencePiece BPE, read from
tokenizer.json, tokenizer.model or GGUF metadata), identical to HF `tokenizers`."""
from __future__ import annotations

import os
from collections.abc import Sequence

from ._lib import check, ffi, lib


class Tokenizer:
    """Tokenizer(path): a checkpoint directory, tokenizer.json, tokenizer.model or .gguf file.

    Raises ModelNotFoundError, CheckpointError or UnsupportedModelError naming the file."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        handle = ffi.new("ffs_tokenizer_t *")
        check(lib.ffs_tokenizer_load(self.path.encode(), handle))
        self._handle = ffi.gc(handle[0], lib.ffs_tokenizer_free)

    @property
    def vocab_size(self) -> int:
        """Largest id + 1, added tokens included."""
        return int(lib.ffs_tokenizer_vocab_size(self._handle))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        data = text.encode("utf-8", "surrogatepass")
        n = ffi.new("int32_t *")
        cap = len(data) // 2 + 16
        while True:
            buf = ffi.new("int32_t[]", cap)
            check(lib.ffs_tokenizer_encode(self._handle, data, len(data), int(add_special_tokens), buf, cap, n))
            if n[0] <= cap:
                return list(ffi.unpack(buf, n[0]))
            cap = n[0]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        arr = ffi.new("int32_t[]", list(ids))
        n = ffi.new("size_t *")
        cap = 4 * len(ids) + 64
        while True:
            buf = ffi.new("char[]", cap)
            check(lib.ffs_tokenizer_decode(self._handle, arr, len(ids), int(skip_special_tokens), buf, cap, n))
            if n[0] <= cap:
                return ffi.unpack(buf, n[0]).decode("utf-8", "replace")
            cap = n[0]

    def __repr__(self) -> str:
        return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size})"
