"""On a CPU, a training step's memory is the process's resident set, and glibc's allocator keeps
what a step frees: past its first large frees it serves allocations up to 32 MiB from its heap,
and a heap page freed below one still in use is never given back. A checkpointed layer frees
tens of MiB of transients while the layer input it keeps sits above them, so the resident set
grows with every layer (bench/memory_bench.py at Qwen2-VL-2B widths, all 28 LM layers, fp32:
training's peak 11,265 MiB under glibc's defaults, 5,586 MiB with freed blocks given back;
bench/RESULTS.md). `finetune` on a CPU therefore maps every allocation of 1 MiB or more on its
own (glibc's `M_MMAP_THRESHOLD`), so that freeing it returns it at once: what
`MALLOC_MMAP_THRESHOLD_=1048576` does, set for this process only.
Unchanged where the user set `MALLOC_MMAP_THRESHOLD_` (theirs stands), on a GPU (device memory
is torch's own allocator's), and where the C library is not glibc."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
THRESHOLD = 1 << 20


def return_freed_blocks(cuda: bool) -> str | None:
    """Set the threshold; the line to say, or None where nothing was set."""
    if cuda or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return None
    libc = _glibc()
    if libc is None or libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD) != 1:
        return None
    return "CPU run: freed blocks of 1 MiB or more go back to the system at once (glibc M_MMAP_THRESHOLD 1 MiB)"


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl has no such symbol)
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc
