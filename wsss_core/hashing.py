"""Content hashes of files and artifact directories (sha256, hex)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

_BLOCK = 1 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_path(path: str | Path, exclude: Iterable[str] = ()) -> str:
    """Hash of a file, or of a directory tree: sha256 over sorted (relative path, file hash) lines.

    Directory hashes ignore file timestamps and permissions, so an artifact copied elsewhere or pulled
    from a DVC remote hashes the same. `exclude` names files (POSIX paths relative to the directory) left out of
    a directory's hash, e.g. the metadata file that records the hash itself.
    """
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory")
    skip = set(exclude)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        if relative not in skip:
            digest.update(f"{relative}\t{sha256_file(file)}\n".encode())
    return digest.hexdigest()
