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


PAGES = """
import sys
sys.path.insert(0, {root!r})
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from vlmsurgeon.train.heap import give_back_checkpoint_pages

def file_mib():
    return int(open("/proc/self/status").read().split("RssFile:")[1].split()[0]) // 1024

path = sys.argv[1]
torch.manual_seed(0)
save_file({{"a": torch.randn(16 << 20).bfloat16(), "b": torch.randn(16 << 20).bfloat16()}}, path)
before = file_mib()
f = safe_open(path, framework="pt", device="cpu")  # as transformers reads a checkpoint: mapped
a, b = f.get_slice("a")[:], f.get_slice("b")[:]
b[:4] = 7.0  # written since it was mapped: that page is the process's own now
total = (a.float().sum() + b.float().sum()).item()  # every page read
read = file_mib() - before
given = give_back_checkpoint_pages()
left = file_mib() - before
print(read, given, left, (a.float().sum() + b.float().sum()).item() == total, bool((b[:4] == 7.0).all()))
"""


def test_checkpoint_pages_are_handed_back_and_weights_still_read_the_same(tmp_path):
    """A 64 MiB mapped safetensors file, every page read: its resident pages go back, what the
    tensors hold is unchanged (read again from the file), and a page written since is kept."""
    code = PAGES.format(root=str(ROOT))
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "w.safetensors")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    read, given, left, same, kept = out.stdout.split()
    assert int(read) >= 60  # the 64 MiB were resident
    assert int(given) >= 60 and int(left) <= 16  # and went back (other files: libraries read meanwhile)
    assert same == "True" and kept == "True"


def test_no_checkpoint_mapping_nothing_said(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f0000000000-7f0000001000 r-xp 00000000 fe:00 1 /usr/lib/libc.so.6\n")
    assert heap.give_back_checkpoint_pages(str(maps)) == 0
    assert heap.give_back_checkpoint_pages(str(tmp_path / "absent")) == 0
    assert heap.checkpoint_pages_line(0) is None
    assert heap.checkpoint_pages_line(3012) == (
        "checkpoint pages read while loading: 3,012 MiB handed back "
        "(weights still mapped from the file are read again on first use)"
    )


def test_finetune_hands_the_pages_back_once_the_model_is_ready(tiny_models, shapes, tmp_path, capsys, monkeypatch):
    from tests.test_finetune import options
    from vlmsurgeon.train.loop import finetune

    calls = []
    monkeypatch.setattr(heap, "give_back_checkpoint_pages", lambda: calls.append(1) or 3012)
    finetune(options(tiny_models("qwen2_vl"), shapes, tmp_path / "run", steps=1))
    err = capsys.readouterr().err
    assert calls == [1]
    # after loading and preparing, before training starts
    assert err.index("preparing ") < err.index("3,012 MiB handed back") < err.index("starting training")


SAMPLING = """
import os, sys
sys.path.insert(0, {root!r})
os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
import torch
from vlmsurgeon.train import heap
assert heap.return_freed_blocks(cuda=False)

def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024

with heap.sampling():
    blocks = [torch.ones(1 << 20) for _ in range(64)]  # 64 blocks of 4 MiB, from the heap now
    kept = torch.ones(1 << 20)  # above them: the heap's top cannot come down
    del blocks
    inside = rss()
after = rss()
# the 1 MiB threshold is back: a block larger than the heap's free space is mapped apart
# (smaller ones reuse that space first, as they would under glibc's defaults)
again = torch.ones(75 << 20)  # 300 MiB
before = rss()
del again
print(inside - after, before - rss())
"""


@pytest.mark.skipif(heap._glibc() is None, reason="glibc's allocator only")
def test_sampling_takes_blocks_from_the_heap_and_gives_them_back_after():
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    code = SAMPLING.format(root=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    trimmed, freed = (int(x) for x in out.stdout.split())
    assert trimmed >= 240  # the 256 MiB freed while sampling left with malloc_trim
    assert freed >= 290  # and a block past the heap's free space is returned at once afterwards


def test_sampling_sets_the_heap_only_where_finetune_set_it(monkeypatch):
    calls = []

    class Libc:
        def mallopt(self, option, value):
            calls.append(("mallopt", option, value))
            return 1

        def malloc_trim(self, pad):
            calls.append(("trim", pad))
            return 1

    monkeypatch.setattr(heap, "_glibc", lambda: Libc())
    monkeypatch.setitem(heap._OURS, "set", False)
    with heap.sampling():
        pass
    assert calls == []  # the user's or glibc's own settings: left alone
    monkeypatch.setitem(heap._OURS, "set", True)
    with pytest.raises(KeyError), heap.sampling():
        assert calls == [("mallopt", -3, 256 << 20), ("mallopt", -1, 512 << 20)]
        raise KeyError  # stopped while sampling: the training settings still come back
    assert calls[2:] == [("mallopt", -1, 128 << 10), ("trim", 0), ("mallopt", -3, 1 << 20)]


def test_grpo_samples_inside_it(tiny_models, shapes, tmp_path, monkeypatch):
    import contextlib

    from tests.test_finetune import options
    from tests.test_grpo_run import GRPO, REWARDS
    from vlmsurgeon.train.loop import finetune

    rewards = tmp_path / "rewards.py"
    rewards.write_text(REWARDS)
    entered = []

    @contextlib.contextmanager
    def spy():
        entered.append(1)
        yield

    monkeypatch.setattr(heap, "sampling", spy)
    grpo = {**GRPO, "num_generations": 2, "batch_size": 1}
    finetune(
        options(
            tiny_models("qwen2_vl"),
            shapes.parent / "grpo.jsonl",
            tmp_path / "run",
            steps=2,
            reward=[f"{rewards}:vowels"],
            **grpo,
        )
    )
    assert len(entered) == 2  # one rollout per step, one prompt each
