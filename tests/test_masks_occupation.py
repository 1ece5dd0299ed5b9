"""The whole > part > subpart occupation filter on hand-made masks whose kept set is worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from wsss_core.masks.occupation import dense_intersections, occupation_filter, partition_intersections


def box(top: int, left: int, bottom: int, right: int, size=(4, 8)) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def keep_of(masks: list[np.ndarray], levels: list[int], t_r: float = 0.3) -> list[bool]:
    stack = np.stack(masks)
    areas = stack.reshape(len(stack), -1).sum(axis=1)
    return occupation_filter(np.array(levels), areas, dense_intersections(stack), t_r).tolist()


def test_levels_are_filled_whole_first_and_only_where_still_free():
    # A 4x8 image. The whole mask is the left half (16 px).
    whole = box(0, 0, 4, 4)
    part_inside_whole = box(0, 0, 2, 2)  # occupied 4/4 = 1.0 by the whole: dropped
    part_on_the_edge = box(0, 3, 4, 7)  # 4 of its 16 px inside the whole: 0.25 < 0.3: kept
    subpart_in_kept_part = box(0, 5, 2, 7)  # inside the kept part: 1.0: dropped
    subpart_in_dropped_part = box(0, 0, 1, 1)  # inside the whole: 1.0: dropped
    subpart_free = box(0, 7, 4, 8)  # the last column, covered by nothing: kept
    masks = [whole, part_inside_whole, part_on_the_edge, subpart_in_kept_part, subpart_in_dropped_part, subpart_free]
    assert keep_of(masks, [2, 1, 1, 0, 0, 0]) == [True, False, True, False, False, True]


def test_a_dropped_mask_does_not_occupy_anything():
    whole = box(0, 0, 4, 4)
    part_dropped = box(0, 0, 4, 5)  # 16 of 20 px in the whole: 0.8: dropped
    subpart_under_the_dropped_part_only = box(0, 4, 4, 5)  # in part_dropped, not in the whole: 0 kept overlap
    assert keep_of([whole, part_dropped, subpart_under_the_dropped_part_only], [2, 1, 0]) == [True, False, True]


def test_the_threshold_is_strict_and_masks_of_one_level_do_not_judge_each_other():
    whole = box(0, 0, 1, 3)  # 3 px
    part = box(0, 0, 1, 8)  # 8 px, 3 in the whole: 0.375
    assert keep_of([whole, part], [2, 1], t_r=0.375) == [True, False]  # not strictly below: dropped
    assert keep_of([whole, part], [2, 1], t_r=0.376) == [True, True]
    twin_wholes = [box(0, 0, 4, 4), box(0, 0, 4, 4)]
    assert keep_of(twin_wholes, [2, 2]) == [True, True]  # every whole mask is kept, overlapping or not


def test_without_whole_masks_the_parts_come_first():
    part, subpart = box(0, 0, 2, 2), box(0, 0, 1, 1)
    assert keep_of([subpart, part], [0, 1]) == [False, True]


def test_empty_masks_are_dropped():
    assert keep_of([box(0, 0, 0, 0), box(0, 0, 2, 2)], [2, 0]) == [False, True]


def test_label_map_intersections_equal_the_dense_ones():
    rng = np.random.default_rng(0)
    label_maps = [rng.integers(0, n, size=(6, 7)) for n in (5, 3, 2)]
    for labels in label_maps:  # make the labels consecutive, as partitions are numbered
        labels[:] = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)
    dense = np.concatenate([np.stack([m == s for s in range(m.max() + 1)]) for m in label_maps])
    by_partition, offsets = partition_intersections(label_maps)
    assert offsets.tolist() == [0, 5, 8, 10]
    rows, cols = np.array([9, 0, 6, 3]), np.array([1, 8, 5, 9, 2])
    expected = dense.reshape(10, -1).astype(int)[rows] @ dense.reshape(10, -1).astype(int)[cols].T
    np.testing.assert_array_equal(by_partition(rows, cols), expected)
    np.testing.assert_array_equal(dense_intersections(dense, chunk=2)(rows, cols), expected)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="t_r must lie in"):
        occupation_filter(np.array([2]), np.array([1]), lambda r, c: np.zeros((len(r), len(c))), 1.5)
    with pytest.raises(ValueError, match="matching 1-D"):
        occupation_filter(np.array([2, 1]), np.array([1]), lambda r, c: None, 0.3)
