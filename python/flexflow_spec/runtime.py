"""ff.init(): start Legion inside this process with FlexFlow Serve's configuration keys."""
from __future__ import annotations

import atexit
import os
import threading

from ._lib import check, ffi, lib
from .errors import InternalError, InvalidArgumentError, OutOfMemoryError, StateError, UnsupportedModelError

# key -> (type, default). Sizes are MiB.
_KEYS = {
    "num_gpus": (int, 0),
    "memory_per_gpu": (int, 0),
    "zero_copy_memory_per_node": (int, 0),
    "num_cpus": (int, None),  # default: see _default_num_cpus
    "legion_utility_processors": (int, 1),
    "data_parallelism_degree": (int, 1),
    "tensor_parallelism_degree": (int, 1),
    "pipeline_parallelism_degree": (int, 1),
    "offload": (bool, False),
    "offload_reserve_space_size": (int, 0),
    "use_4bit_quantization": (bool, False),
    "use_8bit_quantization": (bool, False),
    "profiling": (bool, False),
    "inference_debugging": (bool, False),
    "fusion": (bool, True),
    # ours
    "system_memory": (int, None),  # MiB of Legion system memory (-ll:csize); default min(4 GiB, RAM/2)
    "legion_args": (list, []),      # extra Legion flags, passed as given
}

_lock = threading.Lock()
_settings: dict | None = None   # in force (memory_per_gpu resolved)
_requested: dict | None = None  # as given to init(), for comparing a second call


def _default_num_cpus() -> int:
    return 4


def _default_system_memory() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    except (ValueError, OSError):
        total = 8192
    # Realm sets the whole pool up at start (about 0.25 s per GiB here), so the default is
    # sized for several SmolLM2-sized models rather than for all of RAM.
    return max(1024, min(4096, total // 2))


def _normalize(cfg: dict) -> dict:
    unknown = sorted(set(cfg) - set(_KEYS))
    if unknown:
        raise InvalidArgumentError(f"unknown ff.init() key(s): {', '.join(unknown)}; "
                                   f"valid keys: {', '.join(sorted(_KEYS))}")
    out = {}
    for key, (typ, default) in _KEYS.items():
        val = cfg.get(key, default)
        if val is None:
            val = _default_num_cpus() if key == "num_cpus" else _default_system_memory()
        if typ is bool:
            if not isinstance(val, bool):
                raise InvalidArgumentError(f"ff.init(): {key} must be True or False, got {val!r}")
        elif typ is int:
            if isinstance(val, bool) or not isinstance(val, int) or val < 0:
                raise InvalidArgumentError(f"ff.init(): {key} must be a non-negative integer, got {val!r}")
        elif typ is list:
            if not isinstance(val, (list, tuple)) or not all(isinstance(a, str) for a in val):
                raise InvalidArgumentError(f"ff.init(): {key} must be a list of strings")
            val = list(val)
        out[key] = val
    if out["num_cpus"] < 1:
        raise InvalidArgumentError("ff.init(): num_cpus must be >= 1")
    if out["num_gpus"] > 1:
        raise UnsupportedModelError(
            f"ff.init(num_gpus={out['num_gpus']}): one GPU per process for now (no tensor or pipeline "
            "parallelism across GPUs yet); use num_gpus=1")
    for key in ("tensor_parallelism_degree", "pipeline_parallelism_degree", "data_parallelism_degree"):
        if out[key] != 1:
            raise UnsupportedModelError(f"ff.init(): {key}={out[key]} is not supported yet (only 1)")
    for key in ("offload", "use_4bit_quantization", "use_8bit_quantization"):
        if out[key]:
            raise UnsupportedModelError(f"ff.init(): {key}=True is not supported yet")
    if out["system_memory"] < 64:
        raise InvalidArgumentError("ff.init(): system_memory must be at least 64 MiB")
    return out


def gpu_info() -> dict:
    """The GPU backend as the CUDA runtime sees it: whether this build has it (``built``), the
    number of visible devices, device 0's name and memory (MiB), and ``why`` when none is usable."""
    info = ffi.new("ffs_gpu_info_t *")
    check(lib.ffs_gpu_probe(info))
    return {"built": bool(info.built), "devices": int(info.devices),
            "name": ffi.string(info.name).decode(errors="replace"),
            "free_mib": int(info.free_bytes) >> 20, "total_mib": int(info.total_bytes) >> 20,
            "default_pool_mib": int(info.default_pool_bytes) >> 20,
            "why": ffi.string(info.why).decode(errors="replace")}


_GPU_OUTSIDE_POOL_MIB = 128 + 1024


def _plan_gpu(s: dict) -> int:
    """Check that num_gpus can be honoured; returns the framebuffer pool size in MiB."""
    n = s["num_gpus"]
    info = gpu_info()
    if not info["built"]:
        raise UnsupportedModelError(f"ff.init(num_gpus={n}): {info['why'] or 'this build has no GPU backend'}")
    if info["devices"] < n:
        raise UnsupportedModelError(
            f"ff.init(num_gpus={n}): {info['why'] or str(info['devices']) + ' GPU(s) visible'}")
    free, total = info["free_mib"], info["total_mib"]
    # The default pool is the core's (ffs_gpu_probe): what is left after the CUDA context,
    # cuBLAS and the step's scratch, which live outside Legion.
    want = s["memory_per_gpu"] or info["default_pool_mib"]
    # Outside the pool: Realm's intermediate buffers (-ll:ib_fsize, 128 MiB by default), the
    # CUDA context and lazily loaded kernels, cuBLAS and its workspace, the step's activations,
    # LM-head scratch and CUDA graphs.
    outside = _GPU_OUTSIDE_POOL_MIB
    if s["memory_per_gpu"] and want > free - outside:
        raise OutOfMemoryError(
            f"ff.init(memory_per_gpu={want}) MiB: GPU 0 ({info['name']}) has {free} MiB free of {total}; "
            f"leave at least {outside} MiB outside the pool for Realm's buffers, the CUDA context, cuBLAS and "
            f"the step's scratch (memory_per_gpu <= {max(0, free - outside)})")
    if want < 256:
        raise OutOfMemoryError(f"ff.init(num_gpus={n}): GPU 0 ({info['name']}) has only {free} MiB free of "
                               f"{total}; {want} MiB would be left for the framebuffer pool (memory_per_gpu)")
    return want


def legion_flags(s: dict, framebuffer_mib: int = 0) -> list[str]:
    flags = ["-ll:cpu", str(s["num_cpus"]), "-ll:util", str(max(1, s["legion_utility_processors"])),
             "-ll:csize", str(s["system_memory"]),
             # Realm warns when it cannot give each thread a dedicated core; we do not pin.
             "-level", "threads=5"]
    if s["num_gpus"] > 0:
        flags += ["-ll:gpu", str(s["num_gpus"]), "-ll:fsize", str(framebuffer_mib or s["memory_per_gpu"])]
        if s["zero_copy_memory_per_node"]:
            flags += ["-ll:zsize", str(s["zero_copy_memory_per_node"])]
    if s["profiling"]:
        flags += ["-lg:prof", "1", "-lg:prof_logfile", "prof_%.gz"]
    return flags + s["legion_args"]


def init(configs_dict: dict | None = None, **kwargs) -> dict:
    """Start the runtime. Give a dict or keyword arguments, not both.

    Calling it again with the same settings does nothing; with different settings it raises
    StateError (Legion starts once per process). Returns the settings in force.
    """
    global _settings
    if configs_dict is not None and kwargs:
        raise InvalidArgumentError("ff.init(): give a configuration dict or keyword arguments, not both")
    if configs_dict is not None and not isinstance(configs_dict, dict):
        raise InvalidArgumentError("ff.init(): configs_dict must be a dict")
    settings = _normalize(dict(configs_dict or kwargs))
    global _requested
    with _lock:
        if _settings is not None:
            if settings != _requested:
                changed = sorted(k for k in settings if settings[k] != _requested[k])
                raise StateError("ff.init() was already called with different settings "
                                 f"({', '.join(changed)}); Legion starts once per process")
            return dict(_settings)
        requested = dict(settings)
        if settings["num_gpus"] > 0:
            settings["memory_per_gpu"] = _plan_gpu(settings)  # the pool actually used (MiB)
        args = legion_flags(settings)
        cargs = [ffi.new("char[]", a.encode()) for a in args]
        argv = ffi.new("const char *[]", cargs)
        check(lib.ffs_runtime_init(len(args), argv))
        _settings, _requested = settings, requested
        atexit.register(_shutdown)
        got = int(lib.ffs_runtime_num_gpus())
        if got < settings["num_gpus"]:
            _settings["num_gpus"] = got  # what later calls report: models run on the CPU
            raise InternalError(f"ff.init(num_gpus={settings['num_gpus']}): Legion started with {got} GPU "
                                "processor(s) (see its log above); models will run on the CPU")
    return dict(settings)


def ensure_started() -> None:
    if _settings is None:
        init()


def settings() -> dict | None:
    return dict(_settings) if _settings else None


def _shutdown() -> None:
    lib.ffs_runtime_shutdown()
