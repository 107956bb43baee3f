"""The Docker images' recipes against the checkout (no Docker engine runs here): every file
they copy or run exists and survives .dockerignore, the command they start parses with the
program's own flags, and the CUDA image's Legion layer, built from cmake/ alone, lands in
the cache directory the package build then asks for."""
from __future__ import annotations

import fnmatch
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flexflow_spec.__main__ import parser

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile.*"))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, cur = [], ""
    for line in path.read_text().splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        cur += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            op, _, args = cur.strip().partition(" ")
            out.append((op.upper(), args.strip()))
            cur = ""
    return out


def ignored(rel: str) -> bool:
    """Whether .dockerignore keeps `rel` (a path in the repo) out of the build context."""
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    parts = rel.split("/")
    for pat in patterns:
        pat = pat.rstrip("/")
        for i in range(1, len(parts) + 1):
            if fnmatch.fnmatch("/".join(parts[:i]), pat) or (
                    pat.startswith("**/") and fnmatch.fnmatch("/".join(parts[:i]).split("/")[-1], pat[3:])):
                return True
    return False


def test_there_are_cpu_and_cuda_images():
    assert {p.name for p in DOCKERFILES} >= {"Dockerfile.cpu", "Dockerfile.cuda"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_and_run_files_exist_in_the_build_context(dockerfile):
    ins = instructions(dockerfile)
    copies = [shlex.split(a)[:-1] for op, a in ins if op == "COPY"]
    assert copies, "no COPY"
    for srcs in copies:
        for src in srcs:
            if src == ".":
                continue
            assert (REPO / src).exists(), f"{dockerfile.name}: COPY {src}: no such path"
            assert not ignored(src.rstrip("/")), f"{dockerfile.name}: COPY {src} is excluded by .dockerignore"
    runs = " ".join(a for op, a in ins if op == "RUN")
    for word in shlex.split(runs.replace("&&", " ")):
        if word.startswith(("scripts/", "cmake/")):
            assert (REPO / word).is_file(), f"{dockerfile.name}: RUN uses {word}, which does not exist"
            assert not ignored(word), f"{dockerfile.name}: {word} is excluded by .dockerignore"
    for needed in ("pyproject.toml", "CMakeLists.txt", "src/CMakeLists.txt", "scripts/install.sh",
                   "tests/conftest.py", "python/flexflow_spec/__init__.py"):
        assert not ignored(needed), f".dockerignore excludes {needed}"
    for local in ("build/src/libflexflow_spec.so", ".gpu_carry/legion.tar.xz", "build-gpu/CMakeCache.txt"):
        assert ignored(local), f".dockerignore lets the local build output {local} into the image"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_image_command_parses_with_the_programs_flags(dockerfile):
    cmd = [json.loads(a) for op, a in instructions(dockerfile) if op == "CMD"]
    assert len(cmd) == 1, f"{dockerfile.name}: expected one CMD"
    argv = cmd[0]
    assert argv[:3] == ["python3", "-m", "flexflow_spec"], argv
    args = parser().parse_args(argv[3:])  # SystemExit(2) on a flag the program does not have
    if dockerfile.name == "Dockerfile.cuda":
        assert args.num_gpus == 1


def test_cuda_legion_layer_is_the_one_the_package_build_reuses(tmp_path):
    """The CUDA image builds Legion from `COPY cmake/` before the rest of the source exists; its
    cache key must not depend on anything outside cmake/, or the package build would miss the
    layer's Legion and build another one."""
    if shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists():
        pytest.skip("no nvcc: the CUDA cache key needs the toolkit's cuda.h")
    df = (REPO / "docker" / "Dockerfile.cuda").read_text()
    assert "COPY cmake/ cmake/" in df and "cmake/legion_cache.py --cuda" in df
    shutil.copytree(REPO / "cmake", tmp_path / "cmake")

    def key(root: Path) -> str:
        proc = subprocess.run([sys.executable, str(root / "cmake" / "legion_cache.py"), "--cuda", "--print-key"],
                              capture_output=True, text=True, timeout=60, cwd=root)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().splitlines()[-1]

    assert key(tmp_path) == key(REPO)
