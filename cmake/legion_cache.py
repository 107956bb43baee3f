#!/usr/bin/env python3
"""Build Legion from source once and keep the install in a cache outside the checkout.

The install directory is keyed by Legion version and the build options, so a later
build (of this checkout, another clone, or CI on the same machine) reuses it:

    ~/.cache/flexflow_spec/legion-24.06.0-<options hash>/

Where the source comes from, in order:
  * FFS_LEGION_SOURCE: a Legion source directory, or a tarball holding one;
  * otherwise the pinned copy inside the `flexflow==25.2.1` source distribution on PyPI
    (the only registry copy of Legion's source), checked against its sha256.

CUDA (`--cuda` or FFS_LEGION_CUDA=1) builds Realm's CUDA module into its own cache directory:
the CUDA toolkit's version and our patches (cmake/patches/legion-<version>-*.patch, applied to a
copy of the source) are part of the key. On a machine without a GPU driver it provides what
configuring needs: nvml.h from PyPI's nvidia-nvml-dev wheel and a libcuda.so link stub generated
from the toolkit's cuda.h. See docs/cuda13.md.

Prints the install prefix on the last line of stdout. Safe to run concurrently: a file
lock serialises builds of the same key.
"""
from __future__ import annotations

import argparse
import fcntl
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
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


def options_key(opts: dict, extra: dict | None = None) -> str:
    # `extra` (CUDA builds only) is left out of the blob when empty, so the CPU key stays
    # the one every existing CPU cache directory was built under.
    key = {"version": LEGION_VERSION, "opts": opts}
    if extra:
        key["extra"] = extra
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "on", "true", "yes")


def legion_patches(patch_dir: Path) -> list[Path]:
    """Our patches for this Legion version (applied to CUDA builds only)."""
    return sorted(patch_dir.glob(f"legion-{LEGION_VERSION}-*.patch")) if patch_dir.is_dir() else []


# ---- CUDA toolkit and the pieces a GPU-less build machine lacks ----

@dataclass
class CudaToolkit:
    nvcc: Path
    root: Path
    version: tuple[int, int]  # (major, minor) from cuda.h's CUDA_VERSION

    @property
    def version_str(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"


def find_cuda_toolkit() -> CudaToolkit:
    cands = [os.environ.get("CUDACXX")]
    for var in ("CUDAToolkit_ROOT", "CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            cands.append(str(Path(os.environ[var]) / "bin" / "nvcc"))
    cands += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    for c in cands:
        if c and Path(c).is_file():
            nvcc = Path(c).resolve()
            root = nvcc.parent.parent
            cuda_h = root / "include" / "cuda.h"
            # An nvcc outside a toolkit tree (e.g. a wrapper script on PATH): try the next one.
            m = cuda_h.is_file() and re.search(r"#define\s+CUDA_VERSION\s+(\d+)", cuda_h.read_text())
            if not m:
                continue
            v = int(m.group(1))
            return CudaToolkit(nvcc, root, (v // 1000, (v % 1000) // 10))
    raise SystemExit("[legion-cache] --cuda: no nvcc found (set CUDACXX or CUDAToolkit_ROOT)")


def nvml_include_dir(tk: CudaToolkit) -> Path | None:
    """A directory holding nvml.h, or None when the toolkit has it.

    Realm's CUDA module includes nvml.h; the pip-installed toolkits (and a toolkit without
    the NVML dev package) lack it, so take it from PyPI's nvidia-nvml-dev wheel of the
    toolkit's version (nvidia-nvml-dev-cu12 before CUDA 13).
    """
    if (tk.root / "include" / "nvml.h").is_file():
        return None
    inc = cache_root() / f"cuda-{tk.version_str}-extras" / "include"
    if (inc / "nvml.h").is_file():
        return inc
    major, minor = tk.version
    dist, wheel_glob = ("nvidia-nvml-dev", "nvidia_nvml_dev-") if major >= 13 else \
        (f"nvidia-nvml-dev-cu{major}", f"nvidia_nvml_dev_cu{major}-")
    downloads = cache_root() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    wheels = sorted(glob.glob(str(downloads / f"{wheel_glob}{major}.{minor}.*.whl")))
    if not wheels:
        log(f"downloading nvml.h ({dist}=={major}.{minor}.* from PyPI)")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                        f"{dist}=={major}.{minor}.*", "-d", str(downloads)], check=True, stdout=sys.stderr)
        wheels = sorted(glob.glob(str(downloads / f"{wheel_glob}{major}.{minor}.*.whl")))
    if not wheels:
        raise SystemExit(f"[legion-cache] no {dist} wheel for CUDA {tk.version_str}")
    with zipfile.ZipFile(wheels[-1]) as zf:
        member = next((n for n in zf.namelist() if n.endswith("include/nvml.h")), None)
        if member is None:
            raise SystemExit(f"[legion-cache] {wheels[-1]} holds no include/nvml.h")
        inc.mkdir(parents=True, exist_ok=True)
        tmp = inc / "nvml.h.partial"
        tmp.write_bytes(zf.read(member))
        tmp.rename(inc / "nvml.h")
    log(f"nvml.h from {Path(wheels[-1]).name} -> {inc}")
    return inc


def libcuda_stub(tk: CudaToolkit) -> Path | None:
    """A libcuda.so to link against, or None when CMake will find one by itself.

    Legion links its consumers to CUDA::cuda_driver, so configuring needs some libcuda.so.
    Full toolkits ship lib64/stubs/libcuda.so and GPU machines have the driver's; where
    neither exists (a pip-installed toolkit on a machine without a driver) we generate the
    same kind of stub: every driver entry point declared in the toolkit's cuda.h, each
    returning CUDA_ERROR_STUB_LIBRARY, soname libcuda.so.1 so the real driver is what loads
    at run time. Its path contains "stubs", which keeps it out of Legion's RPATH.
    """
    roots = [tk.root / "lib64", tk.root / "lib", *tk.root.glob("targets/*/lib")]
    if any((r / "stubs" / "libcuda.so").exists() for r in roots):
        return None
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"):
        if (Path(d) / "libcuda.so").exists():
            return None
    out = cache_root() / f"cuda-{tk.version_str}-extras" / "lib" / "stubs" / "libcuda.so"
    if out.exists():
        return out
    cuda_h = tk.root / "include" / "cuda.h"
    names: set[str] = set()
    # The plain, per-thread-default-stream and pre-_v2 ("internal") spellings of each API.
    for defs in ([], ["-DCUDA_API_PER_THREAD_DEFAULT_STREAM=1"], ["-D__CUDA_API_VERSION_INTERNAL"]):
        pre = subprocess.run(["cc", "-E", "-P", "-x", "c", *defs, "-I", str(tk.root / "include"), str(cuda_h)],
                             check=True, capture_output=True, text=True).stdout
        names |= set(re.findall(r"\bCUresult\s+(cu\w+)\s*\(", " ".join(pre.split())))
    if "cuInit" not in names:
        raise SystemExit(f"[legion-cache] found no driver entry points in {cuda_h}")
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_name("libcuda_stub.c")
    src.write_text("/* Generated by cmake/legion_cache.py from cuda.h: link-time stub only. */\n"
                   + "".join(f"int {n}(void) {{ return 34; /* CUDA_ERROR_STUB_LIBRARY */ }}\n"
                             for n in sorted(names)))
    tmp = out.with_name("libcuda.so.partial")
    subprocess.run(["cc", "-shared", "-fPIC", "-O0", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(src)],
                   check=True)
    tmp.rename(out)
    log(f"generated a libcuda.so link stub ({len(names)} entry points) -> {out}")
    return out


def check_pfn_aliases(src: Path, tk: CudaToolkit) -> None:
    """Fail when a driver entry point Realm loads would get the wrong ABI.

    Realm fetches each entry point with cuGetProcAddress(name, CUDA_VERSION), which returns
    the newest ABI PFN_<name>_v<ver> with ver <= CUDA_VERSION; the function pointer it is
    stored in must have that type. CUDA 13 has no PFN_<name> aliases and our patch names
    them for 13.0; a newer toolkit that adds an ABI (a _v13010 type, say) must be caught
    here, not by a crash on a GPU.
    """
    if tk.version < (13, 0):
        return
    internal = (src / "runtime" / "realm" / "cuda" / "cuda_internal.h").read_text()
    aliases = dict(re.findall(r"typedef\s+(PFN_\w+?_v\d+)\s+(PFN_cu\w+);", internal))
    aliases = {alias: versioned for versioned, alias in aliases.items()}
    typedefs = (tk.root / "include" / "cudaTypedefs.h").read_text()
    cuda_version = tk.version[0] * 1000 + tk.version[1] * 10
    wrong = []
    for name, _ in re.findall(r"__op__\((cu\w+),\s*(\w+)\)", internal):
        vers = [int(v) for v in re.findall(rf"\bPFN_{name}_v(\d+)\b(?!_pt)", typedefs)
                if int(v) <= cuda_version]
        want = f"PFN_{name}_v{max(vers)}" if vers else None
        if aliases.get(f"PFN_{name}") != want:
            wrong.append(f"PFN_{name} is {aliases.get(f'PFN_{name}')}, CUDA {tk.version_str} returns {want}")
    if wrong:
        raise SystemExit("[legion-cache] the CUDA 13 patch's driver ABI table does not match this "
                         "toolkit (update cmake/patches/):\n  " + "\n  ".join(wrong))


def cuda_cmake_args(tk: CudaToolkit) -> list[str]:
    """Machine-specific CMake arguments (not part of the key: they do not change what is built)."""
    args = [f"-DCMAKE_CUDA_COMPILER={tk.nvcc}", f"-DCUDAToolkit_ROOT={tk.root}"]
    inc = nvml_include_dir(tk)
    if inc is not None:
        for lang, env in (("CXX", "CXXFLAGS"), ("CUDA", "CUDAFLAGS")):
            flags = (os.environ.get(env, "") + f" -isystem {inc}").strip()
            args.append(f"-DCMAKE_{lang}_FLAGS={flags}")
    stub = libcuda_stub(tk)
    if stub is not None:
        args.append(f"-DCUDA_cuda_driver_LIBRARY={stub}")
    return args


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
        try:
            # The file itself, found in PyPI's simple index (PEP 691 JSON): `pip download` of an
            # sdist also runs its build backend for metadata (flexflow's needs a Rust toolchain).
            import urllib.request
            name = SDIST_NAME.split("==")[0]
            req = urllib.request.Request(f"https://pypi.org/simple/{name}/",
                                         headers={"Accept": "application/vnd.pypi.simple.v1+json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                files = json.load(r)["files"]
            url = next(f["url"] for f in files if f["filename"] == SDIST_FILE)
            part = tarball.with_suffix(".partial")
            with urllib.request.urlopen(url, timeout=300) as r, open(part, "wb") as out:
                shutil.copyfileobj(r, out, 1 << 20)
            part.replace(tarball)
        except Exception as e:  # noqa: BLE001 - a mirror or proxy pip knows about may still work
            log(f"direct download failed ({type(e).__name__}: {e}); trying pip download")
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


def unpack_source(workdir: Path, writable: bool = False) -> Path:
    """The Legion source tree; `writable` copies a FFS_LEGION_SOURCE directory into workdir
    first, so patching never touches the user's own tree."""
    src = os.environ.get("FFS_LEGION_SOURCE")
    if src:
        p = Path(src).expanduser()
        if p.is_dir():
            if not (p / "runtime" / "legion.h").exists():
                raise SystemExit(f"[legion-cache] FFS_LEGION_SOURCE={p} is not a Legion source tree "
                                 "(no runtime/legion.h)")
            if not writable:
                return p
            log(f"copying {p} (it will be patched)")
            return Path(shutil.copytree(p, workdir / "legion", symlinks=True,
                                        ignore=shutil.ignore_patterns(".git")))
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


def apply_patches(src: Path, patches: list[Path]) -> None:
    """Apply each patch once: one that already reverses cleanly is taken as applied."""
    def run_patch(patch: Path, *flags: str) -> subprocess.CompletedProcess:
        return subprocess.run(["patch", "-p1", "-f", "-s", *flags, "-i", str(patch)], cwd=src,
                              capture_output=True, text=True)

    for patch in patches:
        if run_patch(patch, "-R", "--dry-run").returncode == 0:
            log(f"{patch.name} already applied")
            continue
        dry = run_patch(patch, "-N", "--dry-run")
        if dry.returncode != 0:
            raise SystemExit(f"[legion-cache] {patch.name} does not apply to {src}:\n{dry.stdout}{dry.stderr}")
        log(f"applying {patch.name}")
        run_patch(patch, "-N").check_returncode()


def configure(src: Path, bld: Path, install_prefix: Path, opts: dict, extra_args: list[str]) -> None:
    cmd = ["cmake", "-S", str(src), "-B", str(bld), "-G", "Ninja",
           f"-DCMAKE_INSTALL_PREFIX={install_prefix}", "-DCMAKE_POLICY_VERSION_MINIMUM=3.5"]
    cmd += [f"-D{k}={v}" for k, v in opts.items()]
    cmd += extra_args
    log("configuring: " + shlex.join(cmd))
    subprocess.run(cmd, check=True, stdout=sys.stderr)


def build(prefix: Path, opts: dict, jobs: int, patches: list[Path], extra_args: list[str],
          key_extra: dict, cuda_toolkit: CudaToolkit | None) -> None:
    with tempfile.TemporaryDirectory(prefix="ffs-legion-") as tmp:
        tmp = Path(tmp)
        src = unpack_source(tmp / "src", writable=bool(patches))
        apply_patches(src, patches)
        if cuda_toolkit is not None:
            check_pfn_aliases(src, cuda_toolkit)
        bld = tmp / "build"
        staging = prefix.with_name(prefix.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        configure(src, bld, staging, opts, extra_args)
        t0 = time.time()
        log(f"building Legion {LEGION_VERSION} with {jobs} jobs (about 11 minutes on 2 cores)")
        subprocess.run(["cmake", "--build", str(bld), "-j", str(jobs)], check=True, stdout=sys.stderr)
        subprocess.run(["cmake", "--install", str(bld)], check=True, stdout=sys.stderr)
        info = {"version": LEGION_VERSION, "options": opts, "build_seconds": round(time.time() - t0)}
        if key_extra:
            info["extra"] = key_extra
        (staging / "ffs-legion.json").write_text(json.dumps(info, indent=2))
        shutil.rmtree(prefix, ignore_errors=True)
        staging.rename(prefix)
        log(f"built in {time.time() - t0:.0f} s, installed to {prefix}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuda", action="store_true", default=env_flag("FFS_LEGION_CUDA"),
                    help="build Realm/Legion with CUDA (default: FFS_LEGION_CUDA=1)")
    ap.add_argument("--cuda-arch", default=os.environ.get("FFS_LEGION_CUDA_ARCH", "90"),
                    help="CUDA architectures, comma separated (with --cuda; default 90)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--patch-dir", default=str(Path(__file__).parent / "patches"))
    ap.add_argument("--print-key", action="store_true", help="print the cache directory and exit")
    ap.add_argument("--configure-only", metavar="DIR",
                    help="unpack (and patch) the source into DIR/src, configure into DIR/build, "
                         "and stop: no build, no cache entry")
    args = ap.parse_args()

    opts = legion_options(args.cuda, args.cuda_arch)
    patches: list[Path] = []
    key_extra: dict = {}
    extra_args: list[str] = []
    if args.cuda:
        tk = find_cuda_toolkit()
        patches = legion_patches(Path(args.patch_dir))
        key_extra = {"cuda_version": tk.version_str,
                     "patches": {p.name: sha256_of(p) for p in patches}}
    prefix = cache_root() / f"legion-{LEGION_VERSION}-{options_key(opts, key_extra)}"
    if args.print_key:
        print(prefix)
        return
    if args.cuda:
        log(f"CUDA {tk.version_str} at {tk.root}; patches: {[p.name for p in patches] or 'none'}")
        extra_args = cuda_cmake_args(tk)
    if args.configure_only:
        out = Path(args.configure_only).resolve()
        src_dir = out / "src"
        if not (src_dir / "runtime" / "legion.h").exists():
            shutil.rmtree(src_dir, ignore_errors=True)
            unpacked = unpack_source(out / "unpack", writable=True)
            unpacked.rename(src_dir)
            shutil.rmtree(out / "unpack", ignore_errors=True)
        apply_patches(src_dir, patches)
        if args.cuda:
            check_pfn_aliases(src_dir, tk)
        configure(src_dir, out / "build", out / "install", opts, extra_args)
        print(out / "build")
        return
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with open(prefix.parent / f".{prefix.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (prefix / "ffs-legion.json").exists():
            log(f"reusing {prefix}")
        else:
            build(prefix, opts, args.jobs, patches, extra_args, key_extra, tk if args.cuda else None)
    print(prefix)


if __name__ == "__main__":
    main()
