#!/usr/bin/env python3
"""Build Legion from source once and keep the install in a cache outside the checkout.

The install directory is keyed by Legion version and the build options, so a later
build (of this checkout, another clone, or CI on the same machine) reuses it:

    ~/.cache/flexflow_spec/legion-24.06.0-<options hash>/

Where the source comes from, in order:
  * FFS_LEGION_SOURCE: a Legion source directory, or a tarball holding one;
  * otherwise the pinned copy inside the `flexflow==25.2.1` source distribution on PyPI
    (the only registry copy of Legion's source), checked against its sha256.

Prints the install prefix on the last line of stdout. Safe to run concurrently: a file
lock serialises builds of the same key.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

LEGION_VERSION = "24.06.0"
SDIST_NAME = "flexflow==25.2.1"
SDIST_FILE = "flexflow-25.2.1.tar.gz"
SDIST_SHA256 = "233bfd202ef0cfef65e708c92e0f55225bc4e783afdd0da82d578b1c4b871b44"
SDIST_LEGION_DIR = "flexflow-25.2.1/deps/legion"


def log(msg: str) -> None:
    print(f"[legion-cache] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    env = os.environ.get("FFS_LEGION_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flexflow_spec"


def legion_options(use_cuda: bool, cuda_arch: str) -> dict:
    opts = {
        "CMAKE_BUILD_TYPE": "Release",
        "BUILD_SHARED_LIBS": "ON",
        # The default -march=native makes a cache that breaks on another host.
        "BUILD_MARCH": "",
        "Legion_USE_CUDA": "ON" if use_cuda else "OFF",
        "Legion_NETWORKS": "",
        "Legion_USE_Python": "OFF",
        "Legion_MAX_DIM": "4",
        "Legion_USE_ZLIB": "OFF",
        "Legion_BUILD_EXAMPLES": "OFF",
        "Legion_BUILD_TUTORIAL": "OFF",
        "Legion_BUILD_TESTS": "OFF",
        "Legion_BUILD_APPS": "OFF",
        "Legion_BUILD_BINDINGS": "OFF",
        "Legion_USE_OpenMP": "OFF",
        "Legion_USE_HWLOC": "OFF",
        "Legion_USE_LLVM": "OFF",
        "Legion_USE_HDF5": "OFF",
        "Legion_REDOP_HALF": "OFF",
    }
    if use_cuda:
        opts["Legion_CUDA_ARCH"] = cuda_arch
        opts["Legion_HIJACK_CUDART"] = "OFF"
    return opts


def options_key(opts: dict) -> str:
    blob = json.dumps({"version": LEGION_VERSION, "opts": opts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_sdist(downloads: Path) -> Path:
    downloads.mkdir(parents=True, exist_ok=True)
    tarball = downloads / SDIST_FILE
    if not tarball.exists():
        log(f"downloading Legion source ({SDIST_NAME} sdist from PyPI)")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "flexflow",
             SDIST_NAME, "-d", str(downloads)],
            check=True, stdout=sys.stderr)
    digest = sha256_of(tarball)
    if digest != SDIST_SHA256:
        tarball.unlink()
        raise SystemExit(f"[legion-cache] {tarball} has sha256 {digest}, expected {SDIST_SHA256}; "
                         "removed it, run again to re-download")
    return tarball


def unpack_source(workdir: Path) -> Path:
    src = os.environ.get("FFS_LEGION_SOURCE")
    if src:
        p = Path(src).expanduser()
        if p.is_dir():
            if not (p / "runtime" / "legion.h").exists():
                raise SystemExit(f"[legion-cache] FFS_LEGION_SOURCE={p} is not a Legion source tree "
                                 "(no runtime/legion.h)")
            return p
        tarball, inner = p, None
    else:
        tarball, inner = fetch_sdist(cache_root() / "downloads"), SDIST_LEGION_DIR
    log(f"unpacking {tarball}")
    with tarfile.open(tarball) as tf:
        members = [m for m in tf.getmembers() if inner is None or m.name.startswith(inner + "/")]
        tf.extractall(workdir, members=members, filter="data")
    if inner is not None:
        return workdir / inner
    for cand in workdir.rglob("legion.h"):
        if cand.parent.name == "runtime":
            return cand.parent.parent
    raise SystemExit(f"[legion-cache] no Legion source tree inside {tarball}")


def apply_patches(src: Path, patch_dir: Path, use_cuda: bool) -> None:
    if not use_cuda or not patch_dir.is_dir():
        return
    for patch in sorted(patch_dir.glob("*.patch")):
        log(f"applying {patch.name}")
        subprocess.run(["patch", "-p1", "-N", "-i", str(patch)], cwd=src, check=True,
                       stdout=sys.stderr)


def build(prefix: Path, opts: dict, jobs: int, patch_dir: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="ffs-legion-") as tmp:
        tmp = Path(tmp)
        src = unpack_source(tmp / "src")
        apply_patches(src, patch_dir, opts["Legion_USE_CUDA"] == "ON")
        bld = tmp / "build"
        staging = prefix.with_name(prefix.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        cmd = ["cmake", "-S", str(src), "-B", str(bld), "-G", "Ninja",
               f"-DCMAKE_INSTALL_PREFIX={staging}", "-DCMAKE_POLICY_VERSION_MINIMUM=3.5"]
        cmd += [f"-D{k}={v}" for k, v in opts.items()]
        log("configuring: " + " ".join(cmd))
        subprocess.run(cmd, check=True, stdout=sys.stderr)
        t0 = time.time()
        log(f"building Legion {LEGION_VERSION} with {jobs} jobs (about 11 minutes on 2 cores)")
        subprocess.run(["cmake", "--build", str(bld), "-j", str(jobs)], check=True, stdout=sys.stderr)
        subprocess.run(["cmake", "--install", str(bld)], check=True, stdout=sys.stderr)
        (staging / "ffs-legion.json").write_text(json.dumps(
            {"version": LEGION_VERSION, "options": opts, "build_seconds": round(time.time() - t0)},
            indent=2))
        shutil.rmtree(prefix, ignore_errors=True)
        staging.rename(prefix)
        log(f"built in {time.time() - t0:.0f} s, installed to {prefix}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuda", action="store_true", help="build Realm/Legion with CUDA")
    ap.add_argument("--cuda-arch", default="90", help="CUDA architectures (with --cuda)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--patch-dir", default=str(Path(__file__).parent / "legion-patches"))
    ap.add_argument("--print-key", action="store_true", help="print the cache directory and exit")
    args = ap.parse_args()

    opts = legion_options(args.cuda, args.cuda_arch)
    prefix = cache_root() / f"legion-{LEGION_VERSION}-{options_key(opts)}"
    if args.print_key:
        print(prefix)
        return
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with open(prefix.parent / f".{prefix.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (prefix / "ffs-legion.json").exists():
            log(f"reusing {prefix}")
        else:
            build(prefix, opts, args.jobs, Path(args.patch_dir))
    print(prefix)


if __name__ == "__main__":
    main()
