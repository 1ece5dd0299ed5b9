"""Where resumable stages keep unfinished work: keys that change with the code, and locks against concurrent runs.

A stage resumes from `.wsss_scratch/<name>-<key>/` after a kill. The key must cover everything that decides the
result, the code included: otherwise a stage killed half-way, then rerun after a code change (DVC reruns it, its
code deps changed), would mix shards of the old code with shards of the new. `resume_key` therefore hashes the
source of the whole `wsss_core` package and of the stage scripts beside it, a superset of the code deps DVC lists
for any stage: an edit anywhere invalidates unfinished work (it only costs a resume), never a finished artifact.

Two processes writing the same scratch directory or the same artifact corrupt both; `hold_lock` refuses the second
one with a message naming the other process. The locks are POSIX record locks: the kernel drops them when the
process dies, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wsss_core.store.table import ArtifactError

DEFAULT_SCRATCH = Path(".wsss_scratch")
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _code_files(with_script: bool) -> list[Path]:
    files = sorted(_PACKAGE_DIR.rglob("*.py"))
    stages = _PACKAGE_DIR.parent / "stages"  # present in a checkout (the package is installed editable)
    if stages.is_dir():
        files += sorted(stages.glob("*.py"))
    script = Path(sys.argv[0]).resolve() if with_script and sys.argv and sys.argv[0].endswith(".py") else None
    if script is not None and script.is_file() and script not in files:
        files.append(script)
    return files


@functools.lru_cache(maxsize=2)
def code_fingerprint(with_script: bool = True) -> str:
    """sha256 over the relative path and bytes of every source file the stages run (computed once per process).
    with_script: include the running script when it lies outside the package and stages/ (a benchmark, say); an
    engine's worker, whose script is Ray's, compares itself with its stage without it."""
    digest = hashlib.sha256()
    for file in _code_files(with_script):
        try:
            name = file.relative_to(_PACKAGE_DIR.parent).as_posix()
        except ValueError:
            name = file.name
        digest.update(f"{name}\t{hashlib.sha256(file.read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()


def resume_key(material: Any) -> str:
    """A short hash of `material` (JSON-able: layout, provenance, settings) and of the code that will use it."""
    text = json.dumps({"material": material, "code": code_fingerprint()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_held: dict[Path, int] = {}  # lock file -> open descriptor; a POSIX lock lives as long as its process holds one


def hold_lock(lock_file: str | Path, what: str) -> None:
    """Lock `lock_file` for this process until `release_lock` or exit; raise ArtifactError if another process has it.

    Re-locking in the same process is a no-op (POSIX locks belong to the process), so a stage may open a writer twice.
    """
    lock_file = Path(lock_file).resolve()
    if lock_file in _held:
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    while True:
        descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(descriptor, 64, 0).decode(errors="replace").strip() or "?"
            os.close(descriptor)
            raise ArtifactError(
                f"{what} is being written by another running process (pid {holder}, lock {lock_file}); "
                "wait for it to finish, or stop it, then run again"
            ) from None
        if _is_current(lock_file, descriptor):
            break
        os.close(descriptor)  # its holder released and removed it between our open and our lock: take the new one
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    _held[lock_file] = descriptor


def _is_current(lock_file: Path, descriptor: int) -> bool:
    try:
        return os.stat(lock_file).st_ino == os.fstat(descriptor).st_ino
    except FileNotFoundError:
        return False


def release_lock(lock_file: str | Path) -> None:
    """Remove the lock file while still holding it, then let go (a waiting process then finds no stale file)."""
    lock_file = Path(lock_file).resolve()
    descriptor = _held.pop(lock_file, None)
    if descriptor is not None:
        lock_file.unlink(missing_ok=True)
        os.close(descriptor)


def artifact_lock_file(target: str | Path, scratch_root: str | Path = DEFAULT_SCRATCH) -> Path:
    """The lock guarding one output path (named after it, so two stages' outputs never share a lock)."""
    target = Path(target).resolve()
    return Path(scratch_root) / f".{target.name}-{hashlib.sha256(str(target).encode()).hexdigest()[:12]}.lock"


@contextlib.contextmanager
def resumable_work(out: str | Path, material: Any, scratch_root: str | Path = DEFAULT_SCRATCH) -> Iterator[Path]:
    """The pattern of every resumable training-like stage: hold `out`'s lock, and yield its scratch directory
    `<scratch_root>/<out's name>-<resume_key(material)>` (created) where a killed run left its state. The directory
    goes once the body has written `out`; if the body raises it stays, for the next run to resume from. The lock is
    released either way."""
    lock = artifact_lock_file(out, scratch_root)
    hold_lock(lock, str(out))
    try:
        work = Path(scratch_root) / f"{Path(out).name}-{resume_key(material)}"
        work.mkdir(parents=True, exist_ok=True)
        yield work
        shutil.rmtree(work, ignore_errors=True)
    finally:
        release_lock(lock)
