"""Parquet tables with provenance in the file's key-value metadata (key `wsss`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from wsss_core.provenance import dumps
from wsss_core.store.atomic import atomic_file

METADATA_KEY = b"wsss"


class ArtifactError(RuntimeError):
    """An artifact is missing, unreadable, or not what the reader expected."""


def write_table(path: str | Path, table: pa.Table, provenance: dict[str, Any]) -> None:
    """Write atomically; pandas metadata is dropped so the bytes depend only on the data and provenance."""
    metadata = {METADATA_KEY: dumps(provenance).encode()}
    table = table.replace_schema_metadata(metadata)
    with atomic_file(path) as handle:
        pq.write_table(table, handle, compression="zstd", write_statistics=True)


def read_table(path: str | Path) -> tuple[pa.Table, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: table not found (has its stage run?)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise ArtifactError(f"{path}: not a readable parquet file ({error})") from error
    return table, table_provenance(table, path)


def table_provenance(table: pa.Table, path: str | Path = "<table>") -> dict[str, Any]:
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ArtifactError(f"{path}: parquet file has no wsss provenance metadata")
    return json.loads(raw)


def read_parquet_provenance(path: str | Path) -> dict[str, Any]:
    """Provenance without reading the data pages."""
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise ArtifactError(f"{path}: not a readable parquet file ({error})") from error
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ArtifactError(f"{path}: parquet file has no wsss provenance metadata")
    return json.loads(raw)
