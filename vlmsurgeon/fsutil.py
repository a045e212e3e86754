"""Publishing outputs: staged beside their target (`tempfile` makes 0700 folders and 0600 files),
given the modes a plain `mkdir` / `open` would have under the user's umask, then renamed into
place; and the staging leftovers of an earlier, killed run found and removed."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

# errnos that say an output path the user gave is wrong (bad input, exit 2), not that the machine
# failed (a full disk, an I/O error: exit 3)
PATH_ERRNOS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.EROFS,
        errno.ENOENT,
        errno.ENAMETOOLONG,
        errno.EEXIST,
        errno.ENOTEMPTY,
    }
)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def honour_umask(path: Path) -> None:
    """Folders 0777 & ~umask, files 0666 & ~umask (0755 / 0644 under the usual 022)."""
    mask = current_umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        if item.is_symlink():
            continue
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def publish(staging: Path, target: Path) -> None:
    """Give `staging` its final modes and rename it to `target` (same filesystem, atomic)."""
    honour_umask(staging)
    os.replace(staging, target)


def clean_leftovers(target: Path, patterns: tuple[str, ...]) -> list[Path]:
    """Remove staging folders/files beside `target` that a killed run left (names from `patterns`,
    globbed in the target's parent, e.g. `.NAME.*`). Returns what was removed."""
    removed = []
    parent = target.parent
    if not parent.is_dir():
        return removed
    for pattern in patterns:
        for item in parent.glob(pattern.format(name=target.name)):
            if item == target:
                continue
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item, ignore_errors=True)
            else:
                item.unlink(missing_ok=True)
            removed.append(item)
    return removed
