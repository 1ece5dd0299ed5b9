"""Dense-map and table artifacts: round trips, byte-identical rewrites, resume after a kill, atomicity."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from wsss_core.hashing import sha256_path
from wsss_core.provenance import make_provenance
from wsss_core.store import ArtifactError, DenseMaps, DenseMapWriter, read_table, write_table
from wsss_core.store.dense import MAX_SHARD_FILES, default_shard_images


def _labels(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 30, size=(n, 2))
    maps = [rng.integers(0, 4, size=tuple(s)).astype(np.uint8) for s in sizes]
    return [f"img_{i:03d}" for i in range(n)], sizes, maps


def _writer(tmp_path, ids, sizes, name="labels.zarr", **kwargs) -> DenseMapWriter:
    kwargs.setdefault("provenance", make_provenance("test", {"k": 1}))
    return DenseMapWriter(
        tmp_path / name,
        kind="labels",
        image_ids=ids,
        sizes=sizes,
        dtype="uint8",
        class_names=("background", "a", "b", "c"),
        scratch_root=tmp_path / "scratch",
        **kwargs,
    )


def test_label_maps_of_different_sizes_round_trip(tmp_path):
    ids, sizes, maps = _labels(11)
    writer = _writer(tmp_path, ids, sizes, shard_images=4)
    for i in writer.pending():
        writer.write(i, maps[i])
    writer.commit()
    reader = DenseMaps(tmp_path / "labels.zarr", kind="labels")
    assert reader.image_ids == ids and reader.class_names == ["background", "a", "b", "c"]
    for i in range(11):
        np.testing.assert_array_equal(reader[i], maps[i])
    for image_id, data in reader:  # shard-wise iteration gives the same maps
        np.testing.assert_array_equal(data, maps[reader.index_of(image_id)])
    assert sorted(os.listdir(tmp_path / "labels.zarr" / "maps" / "c")) == ["0", "1", "2"]  # 3 shard files
    assert not (tmp_path / "scratch").exists() or not any((tmp_path / "scratch").iterdir())


def test_per_class_maps_keep_their_class_ids(tmp_path):
    rng = np.random.default_rng(1)
    ids = ["a", "b", "c"]
    sizes = np.array([[4, 6], [5, 5], [3, 7]])
    classes = [[3], [1, 7], []]
    cams = [rng.random((len(c), *s)).astype(np.float16) for c, s in zip(classes, sizes, strict=True)]
    writer = DenseMapWriter(
        tmp_path / "cams.zarr",
        kind="cams",
        image_ids=ids,
        sizes=sizes,
        dtype="float16",
        channels=2,
        provenance={},
        scratch_root=tmp_path / "s",
    )
    for i in range(3):
        writer.write(i, cams[i], classes=classes[i])
    writer.commit()
    reader = DenseMaps(tmp_path / "cams.zarr")
    for i in range(3):
        assert reader.classes(i).tolist() == classes[i]
        np.testing.assert_array_equal(reader[i], cams[i])
    with pytest.raises(ArtifactError, match="holds 'cams' maps, expected 'labels'"):
        DenseMaps(tmp_path / "cams.zarr", kind="labels")


def test_same_inputs_give_identical_bytes(tmp_path):
    ids, sizes, maps = _labels(9)
    digests = []
    for run in ("one", "two"):
        writer = _writer(tmp_path / run, ids, sizes, shard_images=2)
        for i in reversed(writer.pending()):  # order of writes must not matter
            writer.write(i, maps[i])
        digests.append(sha256_path(writer.commit()))
    assert digests[0] == digests[1]


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    ids, sizes, maps = _labels(10)
    reference = _writer(tmp_path / "ref", ids, sizes, shard_images=3)
    for i in reference.pending():
        reference.write(i, maps[i])
    expected = sha256_path(reference.commit())

    first = _writer(tmp_path, ids, sizes, shard_images=3)
    for i in first.pending()[:7]:  # "killed" after two full shards and part of the third
        first.write(i, maps[i])
    del first
    assert not (tmp_path / "labels.zarr").exists()
    resumed = _writer(tmp_path, ids, sizes, shard_images=3)
    assert resumed.pending() == [7, 8, 9]  # image 6 was finished: it is not computed again
    for i in resumed.pending():
        resumed.write(i, maps[i])
    assert sha256_path(resumed.commit()) == expected


def test_changed_provenance_does_not_resume_stale_shards(tmp_path):
    ids, sizes, maps = _labels(6)
    first = _writer(tmp_path, ids, sizes, shard_images=2)
    for i in first.pending()[:4]:
        first.write(i, maps[i])
    other = _writer(tmp_path, ids, sizes, shard_images=2, provenance=make_provenance("test", {"k": 2}))
    assert other.pending() == list(range(6))


def test_wrong_shape_is_rejected_with_the_image_id(tmp_path):
    ids, sizes, _ = _labels(2)
    writer = _writer(tmp_path, ids, sizes)
    with pytest.raises(ValueError, match="img_001"):
        writer.write(1, np.zeros((1, 1), np.uint8))


def test_commit_refuses_unfinished_artifact_and_keeps_previous(tmp_path):
    ids, sizes, maps = _labels(4)
    writer = _writer(tmp_path, ids, sizes, shard_images=1)
    for i in writer.pending():
        writer.write(i, maps[i])
    before = sha256_path(writer.commit())
    partial = _writer(tmp_path, ids, sizes, shard_images=1, provenance=make_provenance("test", {"k": 3}))
    partial.write(0, maps[0])
    with pytest.raises(RuntimeError, match="3 shards unfinished"):
        partial.commit()
    assert sha256_path(tmp_path / "labels.zarr") == before


def test_voc_sized_artifact_stays_within_a_few_hundred_files():
    assert default_shard_images(10_582) * MAX_SHARD_FILES >= 10_582
    assert 10_582 / default_shard_images(10_582) <= MAX_SHARD_FILES
    assert default_shard_images(5) == 1


def test_table_round_trip_with_provenance_and_stable_bytes(tmp_path):
    table = pa.table({"image_id": ["a", "b"], "labels": [[1, 2], []]})
    provenance = make_provenance("prepare", {"dataset": {"root": "x"}}, details={"split": "train"})
    write_table(tmp_path / "one.parquet", table, provenance)
    write_table(tmp_path / "two.parquet", table, provenance)
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "two.parquet").read_bytes()
    read, recorded = read_table(tmp_path / "one.parquet")
    assert read.column("labels").to_pylist() == [[1, 2], []]
    assert recorded == provenance


def test_unreadable_table_is_reported_by_path(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(ArtifactError, match="bad.parquet"):
        read_table(bad)
    with pytest.raises(ArtifactError, match="missing.parquet: table not found"):
        read_table(tmp_path / "missing.parquet")
