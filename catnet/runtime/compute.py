"""Where and how tensors are computed: device, bf16 autocast, threads, seeds, batches."""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from catnet.errors import CatnetError
from catnet.runtime.cpuload import free_threads


@dataclass
class Compute:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None = plain fp32

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @property
    def name(self) -> str:
        return f"{self.device.type}/{'bf16' if self.dtype is torch.bfloat16 else 'fp32'}"


@functools.cache
def cpu_has_bf16() -> bool:
    """Native bf16 matmul (AVX512-BF16 or AMX): where autocast is a real speed-up, not a loss."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def select_compute(device: str = "auto", precision: str = "auto") -> Compute:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise CatnetError("--device cuda was asked for, but no CUDA GPU is available")
    dev = torch.device(device)
    if precision == "fp32":
        return Compute(dev, None)
    supported = torch.cuda.is_bf16_supported() if dev.type == "cuda" else cpu_has_bf16()
    if precision == "bf16" and not supported:
        raise CatnetError(f"bf16 is not supported on this {dev.type}; use --precision fp32")
    return Compute(dev, torch.bfloat16 if supported else None)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the OS.

    Why: every activation of a batch is a multi-megabyte tensor. By default glibc serves those
    with fresh mmap() calls and unmaps them when freed, so each forward pass page-faults all its
    activations in again (and zeroes them); README "Fast: decode once" has the measured gain.
    PyTorch's CPU performance guide gets the same effect by swapping in jemalloc or tcmalloc;
    this needs no extra library. Peak memory is unchanged: it only stops memory from being
    returned between batches. A no-op (False) where libc is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mmap_ok = mallopt(m_mmap_threshold, 1 << 30)  # blocks under 1 GiB come from the heap
    trim_ok = mallopt(m_trim_threshold, (1 << 31) - 1)  # (C int max): never shrink the heap
    return bool(mmap_ok and trim_ok)


def setup_threads(reserve: int = 0, share: int = 1) -> int:
    """Give torch cpuload.free_threads(reserve, share) threads (CATNET_THREADS overrides)."""
    threads = free_threads(reserve, share)
    torch.set_num_threads(threads)
    keep_freed_memory()
    return threads


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def batches_of(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))
