"""Parquet tables with provenance in the file's key-value metadata (key `wsss`).

A second key, `wsss_content_sha256`, seals the table's data (see `table_content_sha256` and `store/seal.py`), so
a file whose rows were rewritten under the old metadata is caught by `wsss audit`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.types as pa_types

from wsss_core.provenance import dumps
from wsss_core.store.atomic import atomic_file

METADATA_KEY = b"wsss"
CONTENT_KEY = b"wsss_content_sha256"
_DIGEST_ROWS = 1 << 16  # rows per record batch of the digest stream: fixed, so chunking never changes a digest


class ArtifactError(RuntimeError):
    """An artifact is missing, unreadable, or not what the reader expected."""


def write_table(path: str | Path, table: pa.Table, provenance: dict[str, Any]) -> None:
    """Write atomically; pandas metadata is dropped so the bytes depend only on the data and provenance.

    The content digest is taken of the table as parquet gives it back (encoded once in memory), so that the
    digest `verify_content` recomputes from the file matches whatever physical layout the input arrays had.
    """
    metadata = {METADATA_KEY: dumps(provenance).encode()}
    table = table.replace_schema_metadata(metadata)
    sink = pa.BufferOutputStream()
    _write_parquet(table, sink)
    digest = table_content_sha256(pq.read_table(pa.BufferReader(sink.getvalue())))
    table = table.replace_schema_metadata({**metadata, CONTENT_KEY: digest.encode()})
    with atomic_file(path) as handle:
        _write_parquet(table, handle)


def _write_parquet(table: pa.Table, sink: Any) -> None:
    pq.write_table(table, sink, compression="zstd", write_statistics=True)


class _HashSink:
    """A write-only file object that hashes what is written to it."""

    closed = False

    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.digest.update(view)
        return view.nbytes

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _canonical_type(data_type: pa.DataType) -> pa.DataType:
    """The type with list value fields named alike ("item"; parquet gives them back as "element")."""
    if pa_types.is_map(data_type):
        key = pa.field("key", _canonical_type(data_type.key_type), False)
        item = pa.field("value", _canonical_type(data_type.item_type), data_type.item_field.nullable)
        return pa.map_(key, item, data_type.keys_sorted)
    if pa_types.is_large_list(data_type) or pa_types.is_list(data_type) or pa_types.is_fixed_size_list(data_type):
        value = pa.field("item", _canonical_type(data_type.value_type), data_type.value_field.nullable)
        if pa_types.is_large_list(data_type):
            return pa.large_list(value)
        if pa_types.is_fixed_size_list(data_type):
            return pa.list_(value, data_type.list_size)
        return pa.list_(value)
    if pa_types.is_struct(data_type):
        return pa.struct([pa.field(f.name, _canonical_type(f.type), f.nullable) for f in data_type])
    return data_type


def table_content_sha256(table: pa.Table) -> str:
    """sha256 of a table's data: the Arrow IPC stream of its rows in fixed batches, schema and field metadata
    stripped and list fields named alike, so how the table is chunked and what metadata it carries do not count."""
    schema = pa.schema([pa.field(f.name, _canonical_type(f.type), f.nullable) for f in table.schema])
    table = table.replace_schema_metadata(None).cast(schema)
    sink = _HashSink()
    options = pa.ipc.IpcWriteOptions(metadata_version=pa.ipc.MetadataVersion.V5, compression=None)
    with pa.ipc.new_stream(sink, schema, options=options) as writer:
        for start in range(0, table.num_rows, _DIGEST_ROWS):
            for batch in table.slice(start, _DIGEST_ROWS).combine_chunks().to_batches():
                writer.write_batch(batch)
    return sink.digest.hexdigest()


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
