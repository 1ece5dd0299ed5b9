"""The dataset index: one table row per sample, the table the prepare stage writes as parquet.

Paths are stored relative to the dataset root (POSIX), so an index stays valid when the data moves to another
machine or mount point; content hashes let later stages and auditors check that the files did not change.
The table carries no time- or host-dependent metadata: the same dataset gives the same parquet bytes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
from PIL import Image

from wsss_core.data.base import Dataset, DatasetError, Sample
from wsss_core.hashing import sha256_bytes, sha256_file

INDEX_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_path", pa.string(), nullable=False),
        pa.field("mask_path", pa.string()),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("labels", pa.list_(pa.int16()), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("mask_sha256", pa.string()),
    ]
)

# Schema metadata key describing the dataset (name, split, classes, label source): no root, which is host-specific.
DATASET_METADATA_KEY = b"wsss_core.dataset"


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        raise DatasetError(f"{path}: not inside the dataset root {root}; the index stores relative paths") from None


def _image_size_and_hash(path: Path) -> tuple[int, int, str]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file does not exist") from None
    except OSError as error:
        raise DatasetError(f"{path}: cannot read image ({error})") from error
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"{path}: cannot read image ({error})") from error
    return height, width, sha256_bytes(data)


def index_table(ds: Dataset) -> pa.Table:
    """Build the index table of a dataset (columns in INDEX_SCHEMA), reading every image once for size and hash."""
    columns: dict[str, list] = {name: [] for name in INDEX_SCHEMA.names}
    for sample in ds:
        height, width, image_hash = _image_size_and_hash(sample.image_path)
        columns["image_id"].append(sample.image_id)
        columns["image_path"].append(_relative(sample.image_path, ds.root))
        columns["mask_path"].append(None if sample.mask_path is None else _relative(sample.mask_path, ds.root))
        columns["height"].append(height)
        columns["width"].append(width)
        columns["labels"].append(list(sample.labels))
        columns["image_sha256"].append(image_hash)
        columns["mask_sha256"].append(None if sample.mask_path is None else sha256_file(sample.mask_path))
    description = {
        "name": ds.name,
        "split": ds.split,
        "class_names": list(ds.class_names),
        "label_source": ds.label_source,
    }
    schema = INDEX_SCHEMA.with_metadata({DATASET_METADATA_KEY: json.dumps(description, sort_keys=True).encode()})
    return pa.Table.from_pydict(columns, schema=schema)


def dataset_from_index(
    table: pa.Table,
    root: str | Path,
    name: str,
    split: str,
    class_names: tuple[str, ...],
    label_source: str,
) -> Dataset:
    """Rebuild the Dataset an index table describes, with paths under `root`; no file is read."""
    missing = [column for column in INDEX_SCHEMA.names if column not in table.column_names]
    if missing:
        raise DatasetError(f"index table lacks the columns {missing}")
    root = Path(root)
    columns = [table.column(name).to_pylist() for name in ("image_id", "image_path", "mask_path", "labels")]
    rows = zip(*columns, strict=True)
    samples = tuple(
        Sample(image_id, root / image_path, None if mask_path is None else root / mask_path, labels or ())
        for image_id, image_path, mask_path, labels in rows
    )
    return Dataset(name, root, split, tuple(class_names), samples, label_source)


def read_index(path: str | Path) -> Dataset:
    """Load an index parquet written by the prepare stage back into its Dataset.

    The dataset's kind, root, split, class names and label source come from the `details` of the file's provenance
    (the root as the stage recorded it: relative to the project root when inside it).
    """
    from wsss_core.store.table import read_table  # the store layer is only needed for files, not for tables

    table, provenance = read_table(path)
    details = provenance.get("details", {})
    missing = [key for key in ("kind", "root", "split", "class_names", "label_source") if key not in details]
    if missing:
        raise DatasetError(f"{path}: index provenance lacks the dataset details {missing}")
    return dataset_from_index(
        table,
        Path(details["root"]),
        details["kind"],
        details["split"],
        tuple(details["class_names"]),
        details["label_source"],
    )


def read_index_hashes(path: str | Path) -> dict[str, str]:
    """image id -> sha256 of the image file, as the prepare stage recorded it."""
    from wsss_core.store.table import read_table

    table, _ = read_table(path)
    return dict(zip(table.column("image_id").to_pylist(), table.column("image_sha256").to_pylist(), strict=True))


def read_index_sizes(path: str | Path) -> dict[str, tuple[int, int]]:
    """image id -> (height, width) from an index parquet, without decoding any image."""
    from wsss_core.store.table import read_table

    table, _ = read_table(path)
    columns = (table.column(name).to_pylist() for name in ("image_id", "height", "width"))
    return {image_id: (h, w) for image_id, h, w in zip(*columns, strict=True)}
