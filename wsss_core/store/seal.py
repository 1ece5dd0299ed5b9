"""Content seals: every artifact records the hash of its own content inside itself, where `wsss audit` checks it.

Downstream provenance records the sha256 of each upstream artifact, which catches an upstream changed after it was
read; the seal catches a change to the artifact audited itself, which nothing downstream may have read yet. A
stage writes only its declared outputs, so the seal lives in the artifact's own metadata, never in a sibling file:

  zarr group (`zarr.json` at its top)   `attributes.wsss.content_sha256` in zarr.json
  directory with `provenance.json`      a top-level `content_sha256` key of provenance.json
  parquet table                         key `wsss_content_sha256` of the file's key-value metadata (written by
                                        `store.table.write_table`; a digest of the table's data)

For directories the digest is `sha256_path` of the directory without its top-level metadata file (the file that
holds the digest): sha256 over the sorted (relative path, file sha256) lines of every other file. Writers seal the
finished scratch copy just before it is moved into place (`seal_directory`); sealing again gives the same bytes.

`verify_content` recomputes a digest and compares: OK, CHANGED, or UNSEALED for artifacts written before seals.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wsss_core.hashing import sha256_path
from wsss_core.provenance import dumps
from wsss_core.store.atomic import atomic_directory
from wsss_core.store.table import CONTENT_KEY, ArtifactError, table_content_sha256

SEAL_KEY = "content_sha256"
ZARR_METADATA = "zarr.json"
PROVENANCE_FILE = "provenance.json"

OK, CHANGED, UNSEALED = "OK", "CHANGED", "UNSEALED"


def metadata_file(path: str | Path) -> Path | None:
    """The file of a directory artifact that holds its seal: zarr.json of a zarr group, else provenance.json."""
    path = Path(path)
    for name in (ZARR_METADATA, PROVENANCE_FILE):
        if (path / name).is_file():
            return path / name
    return None


def directory_content_sha256(path: str | Path) -> str:
    """The digest a directory artifact is sealed with (every file but its top-level metadata file)."""
    meta = _require_metadata(path)
    return sha256_path(path, exclude=(meta.name,))


def seal_directory(path: str | Path) -> str:
    """Record the content digest of a finished directory artifact in its metadata file; returns the digest.

    Call it once every other file of the artifact is written, just before the directory is moved into place.
    """
    path = Path(path)
    meta = _require_metadata(path)
    scratch = meta.with_name(f".{meta.name}.seal.tmp")
    scratch.unlink(missing_ok=True)  # left by a kill during an earlier seal; must not count as content
    digest = sha256_path(path, exclude=(meta.name,))
    data = _read_json(meta)
    _seal_holder(meta, data)[SEAL_KEY] = digest
    scratch.write_text(dumps(data))
    os.replace(scratch, meta)
    return digest


@contextmanager
def sealed_directory(path: str | Path) -> Iterator[Path]:
    """`atomic_directory` for an artifact with a provenance.json: the finished copy is sealed, then moved into place."""
    with atomic_directory(path) as building:
        yield building
        seal_directory(building)


def without_seal(provenance: dict[str, Any]) -> dict[str, Any]:
    """A provenance.json record without its seal: the record as the stage made it."""
    return {key: value for key, value in provenance.items() if key != SEAL_KEY}


def verify_content(path: str | Path) -> tuple[str, str]:
    """Recompute an artifact's content digest and compare it with its seal: (status, detail).

    status is OK, CHANGED or UNSEALED (an artifact written before seals existed); the detail names the artifact.
    A file of a report directory (e.g. metrics.json) is checked as that directory.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".parquet":
        return _verify_table(path)
    if path.is_file() and (path.parent / PROVENANCE_FILE).is_file():
        path = path.parent
    if not path.exists():
        raise ArtifactError(f"{path}: not found")
    meta = _require_metadata(path)
    sealed = _seal_holder(meta, _read_json(meta)).get(SEAL_KEY)
    if sealed is None:
        return UNSEALED, f"{path}: no content seal in {meta.name} (written before artifacts sealed their content)"
    actual = sha256_path(path, exclude=(meta.name,))
    if actual != sealed:
        return CHANGED, f"{path}: content changed since written (sha256 now {actual[:12]}, sealed {sealed[:12]})"
    return OK, f"sha256 {actual[:12]} matches its seal"


def _verify_table(path: Path) -> tuple[str, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        sealed = (pq.read_schema(path).metadata or {}).get(CONTENT_KEY)
    except (pa.ArrowInvalid, OSError) as error:
        raise ArtifactError(f"{path}: not a readable parquet file ({error})") from error
    if sealed is None:
        return UNSEALED, f"{path}: no content seal in its metadata (written before tables sealed their content)"
    sealed = sealed.decode()
    try:
        actual = table_content_sha256(pq.read_table(path))
    except (pa.ArrowInvalid, OSError) as error:
        return CHANGED, f"{path}: data no longer readable ({error})"
    if actual != sealed:
        return CHANGED, f"{path}: data changed since written (sha256 now {actual[:12]}, sealed {sealed[:12]})"
    return OK, f"sha256 {actual[:12]} matches its seal"


def _require_metadata(path: str | Path) -> Path:
    meta = metadata_file(path) if Path(path).is_dir() else None
    if meta is None:
        raise ArtifactError(f"{path}: no {ZARR_METADATA} or {PROVENANCE_FILE} to hold a content seal")
    return meta


def _read_json(meta: Path) -> dict[str, Any]:
    try:
        data = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"{meta}: unreadable ({error})") from error
    if not isinstance(data, dict):
        raise ArtifactError(f"{meta}: not a JSON object")
    return data


def _seal_holder(meta: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The JSON object the seal goes in: attributes.wsss of a zarr group, the provenance record itself otherwise."""
    if meta.name != ZARR_METADATA:
        return data
    holder = data.get("attributes", {}).get("wsss")
    if not isinstance(holder, dict):
        raise ArtifactError(f"{meta}: no wsss attributes to hold a content seal")
    return holder
