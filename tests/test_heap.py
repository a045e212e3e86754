"""`finetune` on a CPU gives freed blocks of 1 MiB or more back to the system at once (glibc's
M_MMAP_THRESHOLD, train/heap.py): shown on the resident set of a child process that frees blocks
below one it keeps, with and without it; left alone on a GPU and where the user set it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT
from vlmsurgeon.train import heap

CHILD = """
import os, sys
sys.path.insert(0, {root!r})
os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
import torch
from vlmsurgeon.train.heap import return_freed_blocks
if sys.argv[1] == "set":
    assert return_freed_blocks(cuda=False)

def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024

# a large block freed first raises glibc's own threshold to its size (as a first step does)
first = torch.ones(4 << 20)  # 16 MiB
del first
blocks = [torch.ones(1 << 20) for _ in range(64)]  # 64 blocks of 4 MiB
kept = torch.ones(1 << 20)  # allocated after them: the heap cannot shrink below it
before = rss()
del blocks
print(before - rss())
"""


def _freed_mib(mode: str) -> int:
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    code = CHILD.format(root=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(heap._glibc() is None, reason="glibc's allocator only")
def test_freed_blocks_leave_the_resident_set_only_with_the_threshold():
    assert _freed_mib("set") >= 240  # the 256 MiB freed go back
    assert _freed_mib("default") <= 16  # glibc's defaults keep them


def test_left_alone_on_a_gpu_and_where_the_user_set_it(monkeypatch):
    calls = []

    class Libc:
        def mallopt(self, option, value):
            calls.append((option, value))
            return 1

    monkeypatch.setattr(heap, "_glibc", lambda: Libc())
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert heap.return_freed_blocks(cuda=True) is None and calls == []
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert heap.return_freed_blocks(cuda=False) is None and calls == []
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    assert heap.return_freed_blocks(cuda=False) == (
        "CPU run: freed blocks of 1 MiB or more go back to the system at once (glibc M_MMAP_THRESHOLD 1 MiB)"
    )
    assert calls == [(-3, 1 << 20)]
    monkeypatch.setattr(heap, "_glibc", lambda: None)  # not glibc: nothing set, nothing said
    assert heap.return_freed_blocks(cuda=False) is None


def test_finetune_says_it_on_a_cpu(tiny_models, shapes, tmp_path, capsys, monkeypatch):
    from tests.test_finetune import options
    from vlmsurgeon.train.loop import finetune

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    seen = []
    monkeypatch.setattr(heap, "return_freed_blocks", lambda cuda: seen.append(cuda) or "freed blocks line")
    finetune(options(tiny_models("qwen2_vl"), shapes, tmp_path / "run", steps=1))
    assert seen == [False] and "freed blocks line" in capsys.readouterr().err
