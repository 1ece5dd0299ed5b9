"""Content seals: each artifact records the hash of its own content inside itself, and `verify_content` checks it."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.test_masks_records import fill, writer_for
from wsss_core.hashing import sha256_path
from wsss_core.masks.records import MaskSet
from wsss_core.provenance import dumps, make_provenance
from wsss_core.store import ArtifactError, DenseMaps, DenseMapWriter, read_table, write_table
from wsss_core.store.seal import seal_directory, verify_content
from wsss_core.store.table import CONTENT_KEY, table_content_sha256


def _report(directory, provenance=None):
    directory.mkdir()
    (directory / "metrics.json").write_text('{"miou": 0.5}\n')
    (directory / "sub").mkdir()
    (directory / "sub" / "curve.csv").write_text("step,loss\n0,1.0\n")
    (directory / "provenance.json").write_text(dumps(provenance or make_provenance("evaluate", {"k": 1})))
    return directory


def test_a_provenance_directory_seal_is_a_stable_top_level_key(tmp_path):
    report = _report(tmp_path / "report")
    assert verify_content(report)[0] == "UNSEALED"
    digest = seal_directory(report)
    assert digest == sha256_path(report, exclude=("provenance.json",))
    sealed = (report / "provenance.json").read_text()
    record = json.loads(sealed)
    assert record["content_sha256"] == digest and sealed == dumps(record)  # sorted keys, the provenance format
    assert seal_directory(report) == digest and (report / "provenance.json").read_text() == sealed  # idempotent
    assert sorted(p.name for p in report.iterdir()) == ["metrics.json", "provenance.json", "sub"]  # no sibling file
    assert verify_content(report) == ("OK", f"sha256 {digest[:12]} matches its seal")
    assert verify_content(report / "metrics.json")[0] == "OK"  # a file of the directory checks the directory

    (report / "sub" / "curve.csv").write_text("step,loss\n0,0.1\n")
    status, detail = verify_content(report)
    assert status == "CHANGED" and detail.startswith(f"{report}: content changed since written")
    (report / "sub" / "curve.csv").write_text("step,loss\n0,1.0\n")
    (report / "extra.txt").write_text("added by hand")
    assert verify_content(report)[0] == "CHANGED"


def test_sealing_needs_a_metadata_file(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(ArtifactError, match="no zarr.json or provenance.json"):
        seal_directory(tmp_path / "plain")


def _dense(tmp_path, name="labels.zarr", value=1):
    writer = DenseMapWriter(
        tmp_path / name,
        kind="labels",
        image_ids=["a", "b"],
        sizes=[[2, 3], [4, 2]],
        dtype="uint8",
        provenance=make_provenance("seeds", {"k": 1}),
        scratch_root=tmp_path / "scratch",
        shard_images=1,
    )
    writer.write(0, np.full((2, 3), value, np.uint8))
    writer.write(1, np.full((4, 2), value, np.uint8))
    return writer


def test_a_zarr_seal_lives_in_the_group_attributes_and_the_group_still_reads(tmp_path):
    writer = _dense(tmp_path)
    digest = seal_directory(writer.group_path)  # as DenseMapWriter.commit does just before the move
    path = writer.commit()
    meta = json.loads((path / "zarr.json").read_text())
    assert meta["attributes"]["wsss"]["content_sha256"] == digest == sha256_path(path, exclude=("zarr.json",))
    assert (path / "zarr.json").read_text() == dumps(meta)
    maps = DenseMaps(path, kind="labels")
    assert maps.provenance == make_provenance("seeds", {"k": 1})
    assert maps[1].tolist() == [[1, 1]] * 4
    assert verify_content(path)[0] == "OK"
    shard = next(p for p in sorted((path / "maps" / "c").rglob("*")) if p.is_file())
    shard.write_bytes(shard.read_bytes()[::-1])
    status, detail = verify_content(path)
    assert status == "CHANGED" and str(path) in detail


def test_dense_map_writer_seals_what_it_commits(tmp_path):
    """Needs `seal_directory(self.group_path)` in DenseMapWriter.commit, just before the group is moved into place."""
    path = _dense(tmp_path).commit()
    assert verify_content(path)[0] == "OK"
    again = _dense(tmp_path, name="again.zarr").commit()
    assert sha256_path(again) == sha256_path(path)  # the seal is part of the byte-identical rewrite


def test_table_digest_ignores_chunking_and_metadata_but_not_data():
    table = pa.table({"image_id": ["a", "b", "c"], "labels": [[1, 2], [], None]})
    chunked = pa.concat_tables([table.slice(0, 1), table.slice(1, 2)])
    assert chunked.column(0).num_chunks == 2
    digest = table_content_sha256(table)
    assert table_content_sha256(chunked) == digest
    assert table_content_sha256(table.replace_schema_metadata({b"wsss": b"{}"})) == digest
    edited = pa.table({"image_id": ["a", "b", "d"], "labels": [[1, 2], [], None]})
    assert table_content_sha256(edited) != digest


@pytest.mark.parametrize(
    "table",
    [
        pa.table({"image_id": ["a", None], "n": pa.array([1, None], pa.int64())}),
        pa.table({"s": pa.array([{"a": 1, "b": "x"}, None, {"a": None, "b": None}])}),  # children under a null
        pa.table({"l": pa.array([[[1.0, 2.0]], None, []], pa.list_(pa.list_(pa.float64(), 2)))}),
        pa.table({"m": pa.array([[("k", 1)], None], pa.map_(pa.string(), pa.int64()))}),
        pa.table({"image_id": pa.array([], pa.string())}),
    ],
)
def test_a_written_table_verifies_whatever_its_layout(tmp_path, table):
    provenance = make_provenance("prepare", {})
    write_table(tmp_path / "one.parquet", table, provenance)
    write_table(tmp_path / "two.parquet", table, provenance)
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "two.parquet").read_bytes()
    assert verify_content(tmp_path / "one.parquet")[0] == "OK"
    read, recorded = read_table(tmp_path / "one.parquet")
    assert recorded == provenance and read.to_pylist() == table.to_pylist()


def test_a_table_rewritten_under_its_old_metadata_is_changed(tmp_path):
    path = tmp_path / "index.parquet"
    write_table(path, pa.table({"image_id": ["a", "b"], "n": [1, 2]}), make_provenance("prepare", {}))
    metadata = pq.read_schema(path).metadata
    assert set(metadata) == {b"wsss", CONTENT_KEY}
    pq.write_table(pa.table({"image_id": ["a", "b"], "n": [1, 3]}).replace_schema_metadata(metadata), path)
    status, detail = verify_content(path)
    assert status == "CHANGED" and detail.startswith(f"{path}: data changed since written")
    pq.write_table(pa.table({"image_id": ["a"]}).replace_schema_metadata({b"wsss": metadata[b"wsss"]}), path)
    assert verify_content(path)[0] == "UNSEALED"


def test_a_mask_split_is_sealed_and_reads_back_without_the_seal(tmp_path):
    writer = writer_for(tmp_path)
    fill(writer, writer.pending())
    split = writer.commit_into(tmp_path / "artifact" / "train")
    writer.cleanup()
    assert "content_sha256" in json.loads((split / "provenance.json").read_text())
    assert verify_content(split)[0] == "OK"
    assert all(verify_content(part)[0] == "OK" for part in split.glob("*.parquet"))
    assert MaskSet(split).provenance == writer.provenance
