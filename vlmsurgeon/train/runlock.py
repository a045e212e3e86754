"""The run directory while a process trains in it: `RUN/.lock` (created O_EXCL, holding pid and
host, flock held while the run lives) keeps a second run out; a lock whose process is gone is
taken over; what a failed start created is removed, so the retry is not blocked; a full disk
is named as such."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmsurgeon.errors import BadInput, RuntimeFailure, VlmSurgeonError

LOCK = ".lock"
REPORT = "bad_rows.txt"
CHECKPOINTS = "checkpoints"
COMPLETE = ".vlmsurgeon-complete"
# staging left by a killed run: write_run_outputs' folder and run.json's temporary file
STAGING = (".final-*", ".run.json.*")
# markers of a full disk in what torch (inline_container.cc) and safetensors (Rust) raise
_NO_SPACE = ("No space left", "StorageFull", "PytorchStreamWriter failed", "file write failed", "unexpected pos")


def warn(text: str) -> None:
    print(f"vlmsurgeon: warning: {text}", file=sys.stderr)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that was marked complete; incomplete ones are ignored."""
    folder = run_dir / CHECKPOINTS
    done = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE).is_file()] if folder.is_dir() else []
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, Exception) and any(m in str(exc) for m in _NO_SPACE)


def _free(path: Path) -> str:
    for place in (path, *path.parents):
        if place.exists():
            return f"{shutil.disk_usage(place).free / 2**20:,.1f} MiB free now"
    return "free space unknown"


@contextlib.contextmanager
def disk_errors(where: Path, doing: str | Callable[[], str]) -> Iterator[None]:
    """A full disk while writing, said as such (exit 3) instead of torch's or safetensors' text.
    `doing` may be a function, asked only when it happened (e.g. which checkpoint was saving)."""
    try:
        yield
    except VlmSurgeonError:
        raise
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        filename = getattr(exc, "filename", None)
        place = Path(filename).parent if filename else where
        what = doing() if callable(doing) else doing
        raise RuntimeFailure(
            f"disk full while {what}: no space left in {place} ({_free(place)})",
            "free space on that disk (or choose another -o), then run again",
        ) from exc


def _unwritable(run_dir: Path, exc: OSError) -> VlmSurgeonError:
    place = next((p for p in (run_dir, *run_dir.parents) if p.exists()), run_dir)
    if is_disk_full(exc):
        return RuntimeFailure(
            f"disk full: cannot create the run directory {run_dir} ({_free(place)})",
            "free space on that disk, or choose another -o",
        )
    return BadInput(
        f"-o {run_dir}: cannot write in {place} ({exc.strerror or exc})", "choose a directory you can write to with -o"
    )


def _make_dir(run_dir: Path) -> Path | None:
    """Create `run_dir` (and missing parents); returns the topmost folder it created, if any."""
    if run_dir.exists() and not run_dir.is_dir():
        raise BadInput(f"-o {run_dir}: exists and is not a directory", "choose another -o")
    top = None
    for place in (run_dir, *run_dir.parents):
        if place.exists():
            break
        top = place
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise BadInput(f"-o {run_dir}: part of that path is a file", "choose another -o") from exc
    except OSError as exc:
        raise _unwritable(run_dir, exc) from exc
    return top


def _proc_start(pid: int) -> str | None:
    """The process's start time (Linux): tells a live process from a new one with a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict[str, Any]) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive
    start, now = holder.get("start"), _proc_start(pid)
    return start is None or now is None or start == now


def _entries(run_dir: Path) -> list[str]:
    staging = {p.name for pattern in STAGING for p in run_dir.glob(pattern)}
    return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK and p.name not in staging)


def _read_holder(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        holder = json.loads(os.read(fd, 1 << 16) or b"{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _write_holder(fd: int, run_dir: Path) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start": _proc_start(os.getpid()),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "existing": _entries(run_dir),
    }
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(holder).encode())


def _in_use(run_dir: Path, holder: dict[str, Any]) -> BadInput:
    pid = holder.get("pid", "?")
    host = holder.get("host")
    where = f" on host {host}" if host and host != socket.gethostname() else ""
    return BadInput(
        f"run directory {run_dir} is in use by pid {pid}{where}",
        f"wait for that run to finish, or choose another -o; if it is gone, delete {run_dir / LOCK}",
    )


def _take_over(run_dir: Path, fd: int) -> dict[str, Any] | None:
    """With the flock held on an existing lock: its holder, when that run is gone (stale)."""
    holder = _read_holder(fd)
    other_host = holder.get("host") not in (None, socket.gethostname())
    if other_host or _alive(holder):
        raise _in_use(run_dir, holder)
    return holder


def _open_lock(run_dir: Path) -> tuple[int, dict[str, Any] | None]:
    """The lock's file descriptor, flock held; and the stale holder it replaced, if any."""
    path = run_dir / LOCK
    for _ in range(20):  # the lock may vanish between our tries: its run just ended
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            stale = None
        except FileExistsError:
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            stale = {}
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise _in_use(run_dir, holder) from None
        try:  # the path must still name the file we locked (not one unlinked by its run's end)
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        try:
            return fd, (_take_over(run_dir, fd) if stale is not None else None)
        except BaseException:
            os.close(fd)
            raise
    raise BadInput(f"run directory {run_dir}: its lock keeps changing", "another run is starting there; wait")


def _delete(item: Path) -> None:
    if item.is_dir() and not item.is_symlink():
        shutil.rmtree(item, ignore_errors=True)
    else:
        item.unlink(missing_ok=True)


def _remove(run_dir: Path, keep: set[str]) -> list[str]:
    """Everything in `run_dir` but `keep`, the lock and the bad-rows report."""
    removed = []
    for item in sorted(run_dir.iterdir()):
        if item.name not in keep and item.name not in (LOCK, REPORT):
            _delete(item)
            removed.append(item.name)
    return removed


@dataclass
class Claim:
    """What this process holds in the run directory, and what it found there."""

    run_dir: Path
    created: Path | None = None  # the topmost folder this run created (to remove on failure)
    before: set[str] | None = None  # its entries once locked; None: not ours to clean
    fd: int | None = None


def _clean_stale(run_dir: Path, holder: dict[str, Any]) -> None:
    """A run killed before its first checkpoint left a half-started run: remove what it created
    (what its lock says was there before stays), so this run can start."""
    pid = holder.get("pid", "?")
    removed: list[str] = []
    if "existing" in holder and latest_checkpoint(run_dir) is None:
        removed = _remove(run_dir, set(holder["existing"]))
    said = f"; removed what it left: {', '.join(removed)}" if removed else ""
    warn(f"run directory {run_dir} was locked by pid {pid}, which is gone: taking it over{said}")


def _acquire(run_dir: Path) -> Claim:
    claim = Claim(run_dir, _make_dir(run_dir))
    try:
        try:
            claim.fd, stale = _open_lock(run_dir)
        except OSError as exc:
            raise _unwritable(run_dir, exc) from exc
        claim.before = set(_entries(run_dir))
        if stale is not None:
            _clean_stale(run_dir, stale)
        for item in [p for pattern in STAGING for p in run_dir.glob(pattern)]:
            _delete(item)  # we hold the lock: staging found here is a killed run's
        _write_holder(claim.fd, run_dir)
        claim.before = set(_entries(run_dir))
    except BaseException:
        release(claim, failed=True)
        raise
    return claim


def release(claim: Claim, *, failed: bool) -> None:
    """Unlock. After a failure before the first complete checkpoint, remove what this run
    created (bad_rows.txt stays: it is the report the user needs)."""
    run_dir = claim.run_dir
    owned = claim.fd is not None and claim.before is not None
    if failed and owned and run_dir.is_dir() and latest_checkpoint(run_dir) is None:
        _remove(run_dir, claim.before or set())
    if claim.fd is not None:
        with contextlib.suppress(OSError):
            if os.stat(run_dir / LOCK).st_ino == os.fstat(claim.fd).st_ino:
                os.unlink(run_dir / LOCK)
        os.close(claim.fd)
        claim.fd = None
    if failed and claim.created is not None:
        for place in (run_dir, *run_dir.parents):  # up to the topmost folder we made, if empty
            with contextlib.suppress(OSError):
                place.rmdir()
            if place == claim.created:
                break


@contextlib.contextmanager
def claimed(run_dir: Path, *, main: bool = True) -> Iterator[Claim]:
    """Hold `run_dir` for this run: under torchrun only rank 0 (`main`) locks and cleans."""
    if not main:
        yield Claim(run_dir)
        return
    claim = _acquire(run_dir)
    try:
        yield claim
    except BaseException:
        release(claim, failed=True)
        raise
    release(claim, failed=False)
