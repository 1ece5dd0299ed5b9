"""Artifacts: dense per-image maps (zarr v3) and tables (parquet), both carrying provenance."""

from wsss_core.store.dense import DenseMaps, DenseMapWriter, read_dense_attributes
from wsss_core.store.table import ArtifactError, read_parquet_provenance, read_table, write_table

__all__ = [
    "ArtifactError",
    "DenseMapWriter",
    "DenseMaps",
    "read_dense_attributes",
    "read_parquet_provenance",
    "read_table",
    "write_table",
]
