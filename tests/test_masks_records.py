"""Mask records in parquet: round trips, the split directory, resumable writing in any order, provenance checks."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from wsss_core.hashing import sha256_path
from wsss_core.masks.records import (
    IMAGES_FILE,
    ImageMasks,
    MaskSet,
    iter_image_masks,
    part_file,
    read_image_masks,
    records_to_table,
)
from wsss_core.masks.rle import encode_coco, runs_from_dense
from wsss_core.masks.writer import MaskWriter, default_part_images
from wsss_core.provenance import make_provenance
from wsss_core.store.table import ArtifactError


def make_records(masks: np.ndarray, levels, kept) -> list[dict]:
    height, width = masks.shape[1:]
    strings = encode_coco(runs_from_dense(masks))
    return [
        {
            "segmentation": {"size": [height, width], "counts": counts.decode()},  # SAM writes str counts
            "area": int(mask.sum()),
            "bbox": [0, 0, width - 1, height - 1],
            "predicted_iou": 0.5 + 0.1 * i,
            "stability_score": 0.9,
            "point_coords": [[1.5, 2.25]],
            "crop_box": [0, 0, width, height],
            "level": level,
            "kept": keep,
        }
        for i, (mask, counts, level, keep) in enumerate(zip(masks, strings, levels, kept, strict=True))
    ]


def image_masks(seed: int, size=(5, 7), n: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *size)) < 0.4


def test_records_round_trip_through_a_table():
    masks = image_masks(0)
    table = records_to_table("a", make_records(masks, [2, 1, 0], [True, False, True]))
    everything = read_image_masks(table, "a", kept_only=False)
    np.testing.assert_array_equal(everything.masks, masks)
    assert everything.level.tolist() == [2, 1, 0] and everything.kept.tolist() == [True, False, True]
    assert everything.score.tolist() == pytest.approx([0.5, 0.6, 0.7])
    quasi = read_image_masks(table, "a")
    np.testing.assert_array_equal(quasi.masks, masks[[0, 2]])
    assert table.column("point_coords")[0].as_py() == [[1.5, 2.25]]
    assert table.column("segmentation")[0].as_py()["size"] == [5, 7]


def test_an_image_without_masks_needs_its_size_from_a_bare_table():
    table = records_to_table("a", make_records(image_masks(0), [2, 2, 2], [True] * 3))
    with pytest.raises(ArtifactError, match="no mask records for image 'b'"):
        read_image_masks(table, "b")
    assert read_image_masks(table, "b", size=(5, 7)).masks.shape == (0, 5, 7)


def test_malformed_records_are_named():
    record = make_records(image_masks(0, n=1), [2], [True])[0]
    with pytest.raises(ValueError, match=r"mask record 0 lacks \['level'\]"):
        records_to_table("a", [{k: v for k, v in record.items() if k != "level"}])
    with pytest.raises(ValueError, match="COCO RLE dict"):
        records_to_table("a", [{**record, "segmentation": np.zeros((5, 7), bool)}])
    with pytest.raises(ValueError, match="levels must be 0"):
        ImageMasks(np.zeros((1, 2, 2), bool), [3], [1.0])


def writer_for(tmp_path, n_images=5, part_images=2, **overrides) -> MaskWriter:
    ids = [f"img{i}" for i in range(n_images)]
    return MaskWriter(
        "train",
        image_ids=ids,
        image_sha256=[f"{i:064x}" for i in range(n_images)],
        sizes=np.array([[5, 7]] * n_images),
        provenance=make_provenance("sam_masks", {"sam_masks": {"t_r": 0.3}}, **overrides),
        part_images=part_images,
        scratch_root=tmp_path / "scratch",
    )


def fill(writer: MaskWriter, indices, seed_base: int = 0) -> None:
    for index in indices:
        masks = image_masks(seed_base + index, n=index % 3)  # image 0 has no masks at all
        records = make_records(masks, [2, 1, 0][: len(masks)], [True, False, True][: len(masks)])
        writer.write(index, records_to_table(writer.image_ids[index], records))


def test_a_split_directory_reads_back_image_by_image_and_part_by_part(tmp_path):
    writer = writer_for(tmp_path)
    assert writer.n_parts == 3 and writer.pending() == [0, 1, 2, 3, 4]
    fill(writer, writer.pending())
    split = writer.commit_into(tmp_path / "artifact" / "train")
    writer.cleanup()
    assert sorted(p.name for p in split.iterdir()) == [
        IMAGES_FILE,
        *(part_file(p) for p in range(3)),
        "provenance.json",
    ]
    images = pq.read_table(split / IMAGES_FILE).to_pydict()
    assert (
        images["n_masks"] == [0, 1, 2, 0, 1]
        and images["n_kept"] == [0, 1, 1, 0, 1]
        and images["part"] == [0, 0, 1, 1, 2]
    )
    mask_set = MaskSet(split)
    for index, (image_id, masks) in enumerate(iter_image_masks(split)):
        expected = image_masks(index, n=index % 3)[[True, False, True][: index % 3]]
        np.testing.assert_array_equal(masks.masks, expected)
        np.testing.assert_array_equal(mask_set.read(image_id).masks, expected)
        np.testing.assert_array_equal(read_image_masks(split.parent, image_id).masks, expected)  # from the root
    assert read_image_masks(split / part_file(1), "img2").masks.shape == (1, 5, 7)
    with pytest.raises(ArtifactError, match="no masks for image 'nope'"):
        mask_set.read("nope")


def test_resume_after_a_kill_gives_the_same_bytes(tmp_path):
    reference = writer_for(tmp_path / "one")
    fill(reference, reference.pending())
    expected = sha256_path(reference.commit_into(tmp_path / "one" / "train"))

    first = writer_for(tmp_path)
    fill(first, [0, 1, 2])  # then the process dies
    second = writer_for(tmp_path)  # the rerun finds the finished images (and part 0)
    assert second.pending() == [3, 4]
    assert not (second.work / "images" / "0.arrow").exists()  # part 0 is assembled, its images are gone
    fill(second, second.pending())
    assert sha256_path(second.commit_into(tmp_path / "train")) == expected


def test_images_in_any_order_give_the_same_bytes_and_unfinished_parts_are_refused(tmp_path):
    reference = writer_for(tmp_path / "one")
    fill(reference, reference.pending())
    expected = sha256_path(reference.commit_into(tmp_path / "one" / "train"))

    writer = writer_for(tmp_path)
    fill(writer, [4, 2, 3])  # an engine's workers finish images out of order: part 1 (2, 3) and part 2 (4)
    with pytest.raises(ArtifactError, match=r"1 of 3 parts unfinished \(first: part 0, image 'img0'\)"):
        writer_for(tmp_path).commit_into(tmp_path / "early")
    resumed = writer_for(tmp_path)
    assert resumed.pending() == [0, 1]
    fill(resumed, [1, 0])
    assert sha256_path(resumed.commit_into(tmp_path / "train")) == expected


def test_other_params_use_another_scratch_directory(tmp_path):
    assert writer_for(tmp_path).work != writer_for(tmp_path, details={"k": 1}).work
    assert writer_for(tmp_path).work == writer_for(tmp_path).work


def test_records_of_another_image_are_refused(tmp_path):
    writer = writer_for(tmp_path)
    table = records_to_table("img4", make_records(image_masks(0), [2, 1, 0], [True] * 3))
    with pytest.raises(ValueError, match="records passed for image 'img0' name other images"):
        writer.write(0, table)


def test_masks_are_checked_against_the_dataset(tmp_path):
    writer = writer_for(tmp_path, n_images=3)
    fill(writer, writer.pending())
    mask_set = MaskSet(writer.commit_into(tmp_path / "train"))
    hashes = [f"{i:064x}" for i in range(3)]
    mask_set.check_images(["img0", "img2"], [hashes[0], hashes[2]], "index.parquet")  # a subset is fine
    with pytest.raises(ArtifactError, match="masks of image 'img1' were computed for different content"):
        mask_set.check_images(["img0", "img1"], [hashes[0], "f" * 64], "index.parquet")
    with pytest.raises(ArtifactError, match="no masks for image 'img9' of index.parquet"):
        mask_set.check_images(["img9"], [hashes[0]], "index.parquet")


def test_part_size_defaults():
    assert default_part_images(60) == 8 and default_part_images(10582) == 83  # at most 128 parts
