"""Felzenszwalb-Huttenlocher segmentation (numpy, no scikit-image) and its mask records."""

from __future__ import annotations

import numpy as np
import pytest

from wsss_core.masks.felzenszwalb import FelzenszwalbGenerator, felzenszwalb, felzenszwalb_levels
from wsss_core.masks.records import read_image_masks, records_to_table


def test_the_merge_criterion_on_three_pixels_worked_out_by_hand():
    # Pixels 0, 10, 100 in a row: edge weights 10 and 90. The first edge merges two single pixels whenever
    # 10 <= k; the pair's threshold is then 10 + k / 2, and the second edge (90) merges iff 90 <= 10 + k / 2,
    # i.e. k >= 160 (the single pixel's threshold k is larger).
    row = np.array([[0.0, 10.0, 100.0]])
    assert felzenszwalb(row, k=5, sigma=0, min_size=1).tolist() == [[0, 1, 2]]
    assert felzenszwalb(row, k=150, sigma=0, min_size=1).tolist() == [[0, 0, 1]]
    assert felzenszwalb(row, k=160, sigma=0, min_size=1).tolist() == [[0, 0, 0]]


def test_small_segments_join_a_neighbour():
    row = np.array([[0.0, 10.0, 100.0]])
    assert felzenszwalb(row, k=150, sigma=0, min_size=2).tolist() == [[0, 0, 0]]


def test_two_flat_halves_are_two_segments_until_k_is_huge():
    image = np.zeros((8, 16, 3), dtype=np.uint8)
    image[:, 8:] = 255
    halves = felzenszwalb(image, k=100, sigma=0, min_size=5)
    np.testing.assert_array_equal(halves, (np.arange(16) >= 8)[None].repeat(8, axis=0).astype(int))
    assert felzenszwalb(image, k=1e6, sigma=0, min_size=5).max() == 0


def test_larger_scales_give_fewer_segments_and_the_result_is_deterministic():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(24, 20, 3)).astype(np.uint8)
    levels = felzenszwalb_levels(image, [50, 400, 3000], sigma=0.8, min_size=4)
    counts = [int(labels.max()) + 1 for labels in levels]
    assert counts[0] > counts[1] > counts[2]
    for labels in levels:  # numbered 0..S-1 by first pixel in raster order
        _, first = np.unique(labels.ravel(), return_index=True)
        assert np.all(np.diff(first) > 0)
    again = felzenszwalb_levels(image, [50, 400, 3000], sigma=0.8, min_size=4)
    for first, second in zip(levels, again, strict=True):
        np.testing.assert_array_equal(first, second)


def test_generator_records_partition_each_level_in_sams_schema():
    image = np.zeros((12, 10, 3), dtype=np.uint8)
    image[2:7, 2:6] = (250, 20, 20)  # a red square on black
    image[8:11, 6:9] = (20, 20, 250)  # and a blue one
    records = FelzenszwalbGenerator([10, 50, 400], sigma=0.5, min_size=2).generate(image)
    table = records_to_table("img", records)
    masks = read_image_masks(table, "img", kept_only=False)
    dense = masks.masks
    for level in range(3):  # each level covers every pixel exactly once
        np.testing.assert_array_equal(dense[masks.level == level].sum(axis=0), np.ones((12, 10)))
    assert masks.kept[masks.level == 2].all()  # every whole segment is a quasi-superpixel
    red = np.zeros((12, 10), dtype=bool)
    red[2:7, 2:6] = True
    assert any(np.array_equal(m, red) for m in dense[masks.level == 2])
    first = records[0]
    assert first["crop_box"] == [0, 0, 10, 12] and first["predicted_iou"] == 1.0
    x, y = first["point_coords"][0]
    assert dense[0][int(y), int(x)]  # the stand-in point lies inside its segment
    boxes = [r["bbox"] for r in records]
    for mask, (x0, y0, w, h) in zip(dense, boxes, strict=True):
        ys, xs = np.nonzero(mask)
        assert (x0, y0, w, h) == (xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min())


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="subpart, part and whole"):
        FelzenszwalbGenerator([1, 2])
    with pytest.raises(ValueError, match="min_size >= 1"):
        felzenszwalb(np.zeros((4, 4)), k=1, min_size=0)
