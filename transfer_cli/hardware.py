"""Device, precision, threads and seeds, set up through Accelerate (ready for multi-process runs)."""

from __future__ import annotations

import ctypes
import os
from typing import Any, Tuple

import torch

from .errors import TransferError


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


def resolve_precision(requested: str, device: str) -> str:
    """auto: bf16 where supported (the CPU included), fp16 with a grad scaler on older GPUs, fp32 otherwise."""
    if requested != "auto":
        if requested == "fp16" and device == "cpu":
            raise TransferError("hardware.precision=fp16 is not supported on the CPU; use bf16 or fp32")
        return requested
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "bf16" if device == "cpu" else "fp32"


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


def setup(hardware: Any, seed: int, sharing_jobs: int = 1) -> Tuple[Any, str, str]:
    """An Accelerator for this run, with the resolved device and precision. `sharing_jobs` parallel jobs on this
    machine split its cores (hardware.threads=0)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import set_seed

    device = resolve_device(hardware.device.value)
    precision = resolve_precision(hardware.precision.value, device)
    torch.set_num_threads(hardware.threads or threads_per_job(sharing_jobs))
    if device == "cpu":
        keep_freed_memory()
    # Sweep jobs share one process (Hydra's basic launcher); Accelerate's state is per process, so start afresh.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    # The tokenizer runs before training; keep its thread pool from competing with torch's afterwards.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    set_seed(seed, deterministic=hardware.deterministic)
    accelerator = Accelerator(
        cpu=device == "cpu", mixed_precision="no" if precision == "fp32" else precision, step_scheduler_with_optimizer=False
    )
    return accelerator, str(accelerator.device), precision
