"""Device, precision, threads and seeds, set up through Accelerate (ready for multi-process runs)."""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple

import torch

from .errors import TransferError
from .outputs import write_json

log = logging.getLogger(__name__)

DEFAULT_THREADS = torch.get_num_threads()


def available_cores() -> int:
    """The cores this process may run on (its affinity, where the platform tells)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_device(requested: str) -> str:
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if requested == "auto":
        return next(device for device, ok in available.items() if ok)
    if not available[requested]:
        raise TransferError(f"hardware.device={requested} but no {requested} device is available here; use hardware=auto or hardware=cpu")
    return requested


def cpu_capability() -> str:
    """The vector instructions torch's CPU kernels use here: AVX2, AVX512, SVE256, DEFAULT, ..."""
    return torch.backends.cpu.get_cpu_capability()


def _onednn_bf16() -> bool:
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def cpu_native_bf16() -> bool:
    """bf16 matmuls in hardware: oneDNN reports bf16 support and, on x86, the CPU has AVX512-BF16 or AMX (oneDNN
    also says yes on plain AVX512, where it emulates bf16). Elsewhere bf16 autocast is emulated, ~20x slower."""
    if not _onednn_bf16():
        return False
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return True  # ARM: oneDNN's check is the CPU's bf16 instructions


BF16_MIN_SPEEDUP = 1.1  # bf16 autocast is chosen on a CPU only where the probe measures it this much faster


def _machine_key() -> str:
    """This CPU (model and flags), torch's version and its thread count: what the probe's answer depends on."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = [line for line in info.splitlines() if line.startswith(("model name", "flags", "Features"))][:2]
    except OSError:
        cpu = [platform.processor()]
    return hashlib.sha256(repr((cpu, torch.__version__, torch.get_num_threads())).encode()).hexdigest()[:16]


def _time_block(bf16: bool, tokens: int, repeats: int = 5) -> float:
    """Median seconds of a forward and backward pass through a MiniLM-sized feed-forward block."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, 384, generator=generator, requires_grad=True)
    block = torch.nn.Sequential(torch.nn.Linear(384, 1536), torch.nn.GELU(), torch.nn.Linear(1536, 384))

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = block(x)
        y.float().sum().backward()
        return time.perf_counter() - start

    step()  # warm-up: oneDNN builds its kernels
    return statistics.median(step() for _ in range(repeats))


def bf16_speedup(cache_dir: Optional[Path] = None, tokens: int = 2048) -> float:
    """fp32's time over bf16 autocast's, measured once per machine (about a second) and cached in
    CACHE_DIR/precision_probe.json. CPUs with the same bf16 flags differ: on some (AMX) bf16 trains 1.3-1.7x faster,
    on others (AVX512-BF16 without AMX, seen here) 1.3x slower, so the flags alone cannot decide."""
    path = Path(cache_dir or os.environ.get("TRANSFER_CACHE_DIR", "~/.cache/transfer")).expanduser() / "precision_probe.json"
    key = f"{_machine_key()}-{tokens}"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if key not in cached:
        cached[key] = round(_time_block(False, tokens) / _time_block(True, tokens), 3)
        try:
            write_json(path, cached)
        except OSError:  # a read-only cache: measure again next time
            pass
    return cached[key]


def resolve_precision(requested: str, device: str, cache_dir: Optional[Path] = None) -> str:
    return choose_precision(requested, device, cache_dir)[0]


def choose_precision(requested: str, device: str, cache_dir: Optional[Path] = None) -> Tuple[str, str]:
    """(precision, why). auto: on a CPU, bf16 only where it is native and measured faster than fp32 (`bf16_speedup`);
    on a GPU, bf16 where it supports it, else fp16 with a grad scaler; fp32 on MPS. A forced bf16 on a CPU that
    emulates it warns."""
    capability = cpu_capability()
    if requested == "fp16" and device == "cpu":
        raise TransferError("hardware.precision=fp16 is not supported on the CPU; use bf16 or fp32")
    if requested == "bf16" and device == "cpu" and not cpu_native_bf16():
        log.warning("hardware.precision=bf16 on a CPU without native bf16 (%s): it is emulated and much slower "
                    "(~20x) than fp32; use hardware.precision=auto or fp32", capability)
    if requested != "auto":
        return requested, f"{requested}: hardware.precision={requested}"
    if device == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", "bf16: this GPU supports bf16"
        return "fp16", "fp16 with a grad scaler: this GPU has no bf16"
    if device == "cpu":
        if not cpu_native_bf16():
            return "fp32", f"fp32: this CPU has no native bf16 ({capability})"
        speedup = bf16_speedup(cache_dir)
        if speedup >= BF16_MIN_SPEEDUP:
            return "bf16", f"bf16: this CPU has native bf16 ({capability}), measured {speedup:.2f}x fp32's speed"
        return "fp32", (f"fp32: this CPU has native bf16 ({capability}), but bf16 measured {speedup:.2f}x fp32's "
                        "speed here")
    return "fp32", f"fp32 on {device}"


def keep_freed_memory() -> None:
    """glibc hands large freed blocks back to the OS (mmap threshold, heap trimming), so each training step with a
    new batch width page-faults its activations in again: measured 13-14 -> 17 train samples/s on 2 CPU cores, for
    ~20% more peak memory. Keep freed memory in the process instead (no-op off glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)


def threads_per_job(sharing_jobs: int) -> int:
    """torch's default alone; the machine's cores split evenly among parallel jobs (their worker processes may
    start with a thread limit of their own, so count the cores, not torch's default)."""
    if sharing_jobs <= 1:
        return DEFAULT_THREADS
    return max(1, available_cores() // sharing_jobs)


@dataclass
class Hardware:
    """What a run got: its Accelerator and the decisions behind it."""

    accelerator: Any
    device: str
    precision: str
    precision_reason: str
    cpu_capability: str
    world_size: int


def setup(hardware: Any, seed: int, sharing_jobs: int = 1, cache_dir: Optional[Path] = None,
          **accelerator_options: Any) -> Hardware:
    """An Accelerator for this run, with the resolved device and precision (logged once, with the reason). Each
    process seeds seed + its rank (its own dropout; the data order comes from the seed alone). The processes and
    parallel sweep jobs on this machine split its cores (hardware.threads=0). `accelerator_options` go to the
    Accelerator (trackers)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
    from accelerate.state import AcceleratorState, is_initialized
    from accelerate.utils import set_seed

    if hardware.deterministic:  # on CUDA, deterministic algorithms refuse every cuBLAS matmul without it
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device = resolve_device(hardware.device.value)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(hardware.threads or threads_per_job(sharing_jobs * local_processes))
    decision = [None]
    if int(os.environ.get("RANK", "0")) == 0:
        decision = [choose_precision(hardware.precision.value, device, cache_dir)]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every process trains in rank 0's precision
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(decision, from_process=0)
    precision, why = decision[0]
    if device == "cpu":
        keep_freed_memory()
    mixed_precision = "no" if precision == "fp32" else precision
    state = AcceleratorState() if is_initialized() else None
    if state and (state.mixed_precision != mixed_precision or (device == "cpu") != (state.device.type == "cpu")):
        # Sweep jobs share one process (Hydra's basic launcher) and Accelerate keeps one state per process, with
        # no public way to change it: drop it (the process group, if any, stays).
        AcceleratorState._reset_state()
    # The tokenizer runs before training; keep its thread pool from competing with torch's afterwards.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    accelerator = Accelerator(
        cpu=device == "cpu", mixed_precision=mixed_precision, step_scheduler_with_optimizer=False,
        # a phase may leave modules out of its loss (a frozen teacher, a discriminator in the source phase)
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)], **accelerator_options,
    )
    set_seed(seed, device_specific=True, deterministic=hardware.deterministic)
    if PartialState().is_main_process:
        log.info("precision %s", why)
    return Hardware(accelerator, str(accelerator.device), precision, why, cpu_capability(), accelerator.num_processes)
