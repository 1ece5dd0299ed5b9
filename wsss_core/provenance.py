"""Provenance records: which stage, params, upstream artifacts and checkpoints produced an artifact.

A record is plain JSON-able data with sorted keys and no timestamps or host names, so the same inputs
give the same bytes and DVC's caches hold. Times and hosts belong in the run log (see `runlog.py`).
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

from wsss_core.hashing import sha256_path

FORMAT_VERSION = 1

# Libraries whose version can change an artifact's content. Missing ones are recorded as null.
TRACKED_LIBRARIES = ("wsss-core", "numpy", "torch", "zarr", "pyarrow", "pillow")


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_LIBRARIES + tuple(extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def portable_path(path: str | Path) -> str:
    """Path as recorded: relative to the working directory (the project root) when inside it, POSIX style."""
    path = Path(path)
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def upstream_record(path: str | Path) -> dict[str, str]:
    return {"path": portable_path(path), "sha256": sha256_path(path)}


def make_provenance(
    stage: str,
    params: dict[str, Any],
    upstream: dict[str, str | Path] | None = None,
    checkpoints: dict[str, dict[str, Any]] | None = None,
    libraries: tuple[str, ...] = (),
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the record for an artifact.

    Arguments:
      stage: the pipeline stage writing the artifact.
      params: the subset of params.yaml the stage read (after validation, defaults filled in).
      upstream: name -> path of every artifact read; each is hashed now.
      checkpoints: name -> {"path", "sha256"} or {"pretrained": tag} of every model weight file used.
      libraries: extra distribution names whose versions matter to this stage.
      details: facts about the content that are not params (dataset split, class names, label source, ...).
    """
    record = {
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "params": params,
        "upstream": {name: upstream_record(path) for name, path in sorted((upstream or {}).items())},
        "checkpoints": checkpoints or {},
        "versions": library_versions(libraries),
        "details": details or {},
    }
    return canonical(record)


def canonical(value: Any) -> Any:
    """The same data with dict keys sorted at every level and tuples as lists (stable JSON)."""
    return json.loads(json.dumps(value, sort_keys=True, allow_nan=False))


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, indent=1, allow_nan=False) + "\n"
