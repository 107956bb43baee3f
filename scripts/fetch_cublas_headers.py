#!/usr/bin/env python3
"""Fetch cuBLAS's headers from PyPI's nvidia-cublas wheel, without downloading the wheel.

The CUDA toolkit on the build machine has no cuBLAS; the GPU kernels only need its headers
(libcublas itself is dlopen'ed at run time, see src/kernels/gpu/gemm.cu). The wheel is
~420 MB, so this reads its zip central directory and the few `nvidia/cublas/include/*.h`
members with HTTP Range requests against the files.pythonhosted.org URL that PyPI's JSON API
gives, and checks each member's CRC32 and size against the central directory (a partial
download cannot be checked against the wheel's sha256). The wheel's headers sit in
nvidia/cu13/include/ (CUDA 13 wheels) or nvidia/cublas/include/ (CUDA 12 ones).

Headers go to <cache>/cuda-<major>.<minor>-extras/include, where <cache> is
cmake/legion_cache.py's (FFS_LEGION_CACHE, else $XDG_CACHE_HOME/flexflow_spec, else
~/.cache/flexflow_spec). Idempotent: when the headers are there, nothing is fetched.
Prints the include directory as the last line of stdout; progress goes to stderr.

    python3 scripts/fetch_cublas_headers.py [--cuda-version 13.0] [--wheel-version 13.0.2.14]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cmake"))
import legion_cache  # noqa: E402  (cache_root, find_cuda_toolkit: one cache-location convention)

DIST = "nvidia-cublas"
PYPI_JSON = "https://pypi.org/pypi/{dist}/json"
# CUDA 13 wheels put headers under nvidia/cu13/include/; the CUDA 12 ones used nvidia/cublas/include/.
INCLUDE_DIR_RE = re.compile(r"^nvidia/(cu\d+|cublas)/include/([^/]+\.h)$")
REQUIRED = ("cublas_api.h", "cublas_v2.h", "cublas.h")
STAMP = ".nvidia-cublas-headers"  # records the wheel the headers came from
TIMEOUT_S = 60


class FetchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[cublas-headers] {msg}", file=sys.stderr, flush=True)


# ---- HTTP ----


def http_get(url: str, byte_range: str | None = None) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "flexflow_spec-fetch-cublas-headers"})
    if byte_range:
        req.add_header("Range", f"bytes={byte_range}")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
            if byte_range and r.status != 206:
                # A server ignoring Range would send the whole 420 MB wheel: refuse.
                raise FetchError(f"{url} answered {r.status} to a Range request (expected 206 Partial Content)")
            return r.read()
    except urllib.error.HTTPError as e:
        raise FetchError(f"GET {url} (range {byte_range}): HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as e:
        raise FetchError(
            f"GET {url}: {e} (no network? set FFS_LEGION_CACHE to a cache that already "
            f"holds the headers, or copy them into <cache>/cuda-X.Y-extras/include)"
        ) from e


def read_range(url: str, start: int, length: int) -> bytes:
    data = http_get(url, f"{start}-{start + length - 1}")
    if len(data) != length:
        raise FetchError(f"{url}: asked for {length} bytes at {start}, got {len(data)}")
    return data


def pick_wheel(cuda_major: int, cuda_minor: int, wheel_version: str | None) -> tuple[str, str, int]:
    """(version, url, size) of the linux x86-64 wheel: the given version, else the newest
    final release whose version starts with the toolkit's major.minor (cuBLAS 13.0.x ships
    with CUDA 13.0)."""
    url = PYPI_JSON.format(dist=DIST)
    try:
        meta = json.loads(http_get(url))
    except json.JSONDecodeError as e:
        raise FetchError(f"{url}: not JSON ({e})") from e
    releases = meta.get("releases", {})

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(p) if p.isdigit() else -1 for p in v.split("."))  # "10rc1": sorts low

    if wheel_version:
        cands = [wheel_version] if wheel_version in releases else []
    else:
        pat = re.compile(rf"^{cuda_major}\.{cuda_minor}\.\d+(\.\d+)*$")  # final releases only
        cands = sorted((v for v in releases if pat.match(v)), key=key, reverse=True)
    for v in cands:
        for f in releases[v]:
            if f.get("packagetype") == "bdist_wheel" and re.search(r"manylinux.*x86_64\.whl$", f["filename"]):
                # Mirrors answer with URLs relative to the JSON document.
                return v, urllib.parse.urljoin(url, f["url"]), int(f["size"])
    want = wheel_version or f"{cuda_major}.{cuda_minor}.*"
    raise FetchError(
        f"PyPI has no linux x86-64 {DIST} wheel for version {want} "
        f"(releases: {', '.join(sorted(releases, key=key)[-8:])})"
    )


# ---- zip central directory ----


@dataclass
class Member:
    name: str
    method: int  # 0 stored, 8 deflate
    crc32: int
    csize: int
    usize: int
    local_offset: int


def central_directory(url: str, size: int) -> list[Member]:
    # End of central directory: 22 bytes + a comment of at most 65535; read the last 64 KiB + some.
    tail_len = min(size, 65536 + 22 + 20)
    tail = read_range(url, size - tail_len, tail_len)
    eocd = tail.rfind(b"PK\x05\x06")
    if eocd < 0:
        raise FetchError(f"{url}: no zip end-of-central-directory record in the last {tail_len} bytes")
    _, _, _, _, n_entries, cd_size, cd_offset, _ = struct.unpack_from("<4sHHHHIIH", tail, eocd)
    if cd_offset == 0xFFFFFFFF or n_entries == 0xFFFF or cd_size == 0xFFFFFFFF:
        loc = tail.rfind(b"PK\x06\x07", 0, eocd)  # zip64 locator -> zip64 EOCD
        if loc < 0:
            raise FetchError(f"{url}: zip64 archive without a zip64 locator")
        (z64_off,) = struct.unpack_from("<Q", tail, loc + 8)
        z64 = read_range(url, z64_off, 56)
        if z64[:4] != b"PK\x06\x06":
            raise FetchError(f"{url}: bad zip64 end-of-central-directory record")
        n_entries, cd_size, cd_offset = struct.unpack_from("<QQQ", z64, 32)
    cd = read_range(url, cd_offset, cd_size)
    members, p = [], 0
    for _ in range(n_entries):
        if cd[p : p + 4] != b"PK\x01\x02":
            raise FetchError(f"{url}: corrupt central directory at entry offset {p}")
        (method, crc, csize, usize, nlen, xlen, clen, local) = struct.unpack_from("<10xH4xIIIHHH8xI", cd, p)
        name = cd[p + 46 : p + 46 + nlen].decode("utf-8")
        extra = cd[p + 46 + nlen : p + 46 + nlen + xlen]
        # zip64 extra field (id 1): the 0xFFFFFFFF fields, in order usize, csize, offset.
        q = 0
        while q + 4 <= len(extra):
            hid, hlen = struct.unpack_from("<HH", extra, q)
            if hid == 1:
                vals = list(struct.unpack_from(f"<{hlen // 8}Q", extra, q + 4))
                if usize == 0xFFFFFFFF:
                    usize = vals.pop(0)
                if csize == 0xFFFFFFFF:
                    csize = vals.pop(0)
                if local == 0xFFFFFFFF:
                    local = vals.pop(0)
            q += 4 + hlen
        members.append(Member(name, method, crc, csize, usize, local))
        p += 46 + nlen + xlen + clen
    return members


def fetch_member(url: str, m: Member) -> bytes:
    head = read_range(url, m.local_offset, 30)
    if head[:4] != b"PK\x03\x04":
        raise FetchError(f"{url}: no local file header for {m.name} at {m.local_offset}")
    nlen, xlen = struct.unpack_from("<HH", head, 26)
    raw = read_range(url, m.local_offset + 30 + nlen + xlen, m.csize)
    if m.method == 0:
        data = raw
    elif m.method == 8:
        data = zlib.decompress(raw, -15)
    else:
        raise FetchError(f"{m.name}: unsupported zip compression method {m.method}")
    if len(data) != m.usize or zlib.crc32(data) != m.crc32:
        raise FetchError(
            f"{m.name}: size/CRC32 mismatch against the central directory "
            f"({len(data)} bytes, crc {zlib.crc32(data):08x}; expected {m.usize}, {m.crc32:08x})"
        )
    return data


# ---- main ----


def includes_missing(inc: Path, toolkit_include: Path | None) -> list[str]:
    """Headers #included by the fetched ones that neither they nor the toolkit provide."""
    missing = set()
    for h in inc.glob("*.h"):
        for dep in re.findall(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', h.read_text(errors="replace"), re.M):
            if (inc / dep).exists() or (toolkit_include and (toolkit_include / dep).exists()):
                continue
            if "/" not in dep and not dep.startswith(("cu", "nv", "driver", "vector", "library", "host")):
                continue  # system headers (stdint.h, stdio.h, ...)
            missing.add(f"{dep} (from {h.name})")
    return sorted(missing)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cuda-version", help="toolkit major.minor (default: the nvcc found, as cmake/legion_cache.py)")
    ap.add_argument("--wheel-version", help=f"an exact {DIST} version (default: newest <cuda major.minor>.*)")
    ap.add_argument("--force", action="store_true", help="fetch again even when the headers are cached")
    args = ap.parse_args()

    toolkit_include = None
    if args.cuda_version:
        m = re.match(r"^(\d+)\.(\d+)", args.cuda_version)
        if not m:
            log(f"--cuda-version {args.cuda_version!r}: expected major.minor, e.g. 13.0")
            return 2
        major, minor = int(m.group(1)), int(m.group(2))
    else:
        try:
            tk = legion_cache.find_cuda_toolkit()
        except SystemExit:
            log("no CUDA toolkit found (nvcc); pass --cuda-version")
            return 2
        major, minor = tk.version
        toolkit_include = tk.root / "include"
    if toolkit_include is None and Path("/usr/local/cuda/include").is_dir():
        toolkit_include = Path("/usr/local/cuda/include")

    inc = legion_cache.cache_root() / f"cuda-{major}.{minor}-extras" / "include"
    stamp = inc / STAMP
    cached = stamp.is_file() and all((inc / h).is_file() for h in REQUIRED)
    if cached and args.wheel_version and not stamp.read_text().startswith(f"{DIST}=={args.wheel_version} "):
        cached = False  # another version asked for explicitly
    if cached and not args.force:
        log(f"cuBLAS headers already cached ({stamp.read_text().strip()}): {inc}")
        print(inc)
        return 0

    try:
        version, url, size = pick_wheel(major, minor, args.wheel_version)
        log(
            f"{DIST} {version}: reading the zip directory of {url.rsplit('/', 1)[-1]} ({size / 2**20:.0f} MiB, "
            f"Range requests only)"
        )
        members = {}  # header name -> member
        for m in central_directory(url, size):
            hit = INCLUDE_DIR_RE.match(m.name)
            if hit:
                members[hit.group(2)] = m
        if not all(h in members for h in REQUIRED):
            raise FetchError(
                f"{url}: the wheel lacks {', '.join(h for h in REQUIRED if h not in members)} under nvidia/*/include/"
            )
        inc.mkdir(parents=True, exist_ok=True)
        total = 0
        for header, m in sorted(members.items()):
            data = fetch_member(url, m)
            total += len(data)
            # Write then rename: a concurrent configure never sees half a header.
            fd, tmp = tempfile.mkstemp(dir=inc, prefix=".partial-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)  # mkstemp makes 0600
            os.replace(tmp, inc / header)
        stamp.write_text(f"{DIST}=={version} {url.rsplit('/', 1)[-1]}\n")
    except FetchError as e:
        log(f"error: {e}")
        return 1
    log(f"{len(members)} headers ({total / 1024:.0f} KiB, CRC32 checked) from {DIST} {version} -> {inc}")
    for dep in includes_missing(inc, toolkit_include):
        log(f"warning: {dep} is in neither the wheel's headers nor the toolkit ({toolkit_include})")
    print(inc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
