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
is torch's own allocator's), and where the C library is not glibc.

The checkpoint is read through memory maps (safetensors), and every page read while loading stays
in the resident set for as long as any weight still points into its file: in a bf16 run the frozen
weights are views of the file, so the pages of the layers quantized to 4 bits stay too. Once the
model is ready, those mappings' pages are handed back (`MADV_PAGEOUT`, never data: a page written
since it was mapped is kept), and the frozen weights' pages are read again from the file on their
first use (Qwen2-VL-2B widths, all 28 LM and 32 vision layers, bf16: 2,573 MiB handed back,
training's peak 7,398 → 4,866 MiB; bench/RESULTS.md)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from pathlib import Path

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
THRESHOLD = 1 << 20
M_TRIM_THRESHOLD = -1
TRIM_THRESHOLD = 128 << 10  # glibc's default
# while sampling: a 7B model's 4-bit MLP weight unpacked in fp32 is 180 MB, and the heap's top is
# kept up to twice that instead of being cut and grown again on every free
SAMPLING_THRESHOLD = 256 << 20
SAMPLING_TRIM = 512 << 20
MADV_PAGEOUT = 21  # Linux 5.4 and later
CHECKPOINT_SUFFIX = ".safetensors"
_OURS = {"set": False}  # whether this process's threshold is the one return_freed_blocks set


def return_freed_blocks(cuda: bool) -> str | None:
    """Set the threshold; the line to say, or None where nothing was set."""
    if cuda or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return None
    libc = _glibc()
    if libc is None or libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD) != 1:
        return None
    _OURS["set"] = True
    return "CPU run: freed blocks of 1 MiB or more go back to the system at once (glibc M_MMAP_THRESHOLD 1 MiB)"


@contextlib.contextmanager
def sampling() -> Iterator[None]:
    """Around token-by-token sampling (GRPO's rollouts, answers during training). Each new token
    unpacks every 4-bit weight it meets (tens of MiB each) and grows the KV cache, and computes
    little with them: mapped and returned one by one, or cut from the heap's top and grown again
    (glibc's 128 KiB trim threshold), those blocks cost more in page faults than the sampling
    itself (GRPO at Qwen2-VL-2B widths: 162 s per rollout vs TRL's 82, bench/RESULTS.md). While it
    samples, blocks up to 256 MiB come from the heap and its top is kept; after it, the heap's
    free pages go back (`malloc_trim`) and the training settings return. Nothing is changed where
    return_freed_blocks set nothing."""
    libc = _glibc() if _OURS["set"] else None
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, SAMPLING_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, SAMPLING_TRIM)
    try:
        yield
    finally:
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        libc.malloc_trim(0)
        libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD)


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
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc


def give_back_checkpoint_pages(maps: str = "/proc/self/maps", status: str = "/proc/self/status") -> int:
    """Hand back the resident pages of every memory-mapped safetensors file of this process; the
    MiB the resident set's file-backed part fell by. 0 where there is no such mapping, no
    /proc (not Linux), or the kernel has no MADV_PAGEOUT."""
    try:
        lines = Path(maps).read_text().splitlines()
    except OSError:
        return 0
    regions = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].endswith(CHECKPOINT_SUFFIX):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            regions.append((start, end - start))
    if not regions:
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return 0
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    before = _file_kib(status)
    for start, length in regions:
        if libc.madvise(start, length, MADV_PAGEOUT) != 0:  # EINVAL: a kernel before 5.4
            break
    return max(0, before - _file_kib(status)) // 1024


def checkpoint_pages_line(mib: int) -> str | None:
    if mib < 1:
        return None
    return (
        f"checkpoint pages read while loading: {mib:,} MiB handed back "
        "(weights still mapped from the file are read again on first use)"
    )


def _file_kib(status: str) -> int:
    try:
        return int(Path(status).read_text().split("RssFile:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return 0
