"""Atomic replacement of files and directories: a killed stage leaves the old artifact or none."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator:
    """Write to a temporary file beside `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would make shared artifacts unreadable to teammates
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_directory(source: str | Path, target: str | Path) -> None:
    """Move a finished directory into place, replacing `target`; restartable from any point, losing nothing.

    The old target is renamed aside (`.NAME.old`), the new one renamed in, then the old one removed. A kill between
    the renames leaves no target, never a mix of old and new files, and the old copy stays aside until a new target
    is in place: a `.NAME.old` is only ever deleted while a target exists. A `source` on another filesystem (a
    scratch folder on the project's disk, the output on another mount) is first copied beside the target
    (`.NAME.incoming`), so the final step is still one rename; if that rename fails, the old target is put back.
    """
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not _same_filesystem(source, target.parent):
        incoming = target.with_name(f".{target.name}.incoming")
        shutil.rmtree(incoming, ignore_errors=True)  # a copy a killed run left half-made
        try:
            shutil.copytree(source, incoming)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        _swap_in(incoming, target)
        moved = source.with_name(f".{source.name}.moved")
        os.replace(source, moved)  # gone from its place in one step: a kill during the deletion leaves no half source
        shutil.rmtree(moved)
    else:
        _swap_in(source, target)


def _same_filesystem(source: Path, directory: Path) -> bool:
    return os.stat(source).st_dev == os.stat(directory).st_dev


def _swap_in(new: Path, target: Path) -> None:
    aside = target.with_name(f".{target.name}.old")
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        if aside.exists():
            shutil.rmtree(aside)  # a leftover of an interrupted swap; the target is the copy that counts
        os.replace(target, aside)
    try:
        os.replace(new, target)
    except BaseException:
        if aside.exists() and not target.exists():
            os.replace(aside, target)
        raise
    if aside.exists():
        shutil.rmtree(aside)


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name beside `path`; move it into place if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
