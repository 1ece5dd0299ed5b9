"""Run-length forms of masks: COCO strings decoded without pycocotools agree with it, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_utils

from wsss_core.masks.rle import (
    RleError,
    coco_counts,
    decode_coco_counts,
    empty_runs,
    encode_coco,
    runs_from_coco,
    runs_from_dense,
    runs_from_labels,
)


def coco_strings(masks: np.ndarray) -> list[bytes]:
    if len(masks) == 0:
        return []
    return [rle["counts"] for rle in mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))]


def test_a_hand_made_mask_has_the_runs_and_counts_worked_out_by_hand():
    # Column-major pixel order: column 0 is pixels 0-2 (1, 1, 0), column 1 is pixels 3-5 (0, 1, 1).
    mask = np.array([[1, 0], [1, 1], [0, 1]], dtype=bool)
    runs = runs_from_dense(mask[None])
    assert runs.starts.tolist() == [0, 4] and runs.lengths.tolist() == [2, 2] and runs.offsets.tolist() == [0, 2]
    assert runs.pixels().tolist() == [0, 1, 4, 5]
    assert coco_counts(runs) == [[0, 2, 2, 2]]  # starts with a background run of 0; no closing background run
    assert runs_from_coco(coco_strings(mask[None]), (3, 2)).starts.tolist() == [0, 4]


@settings(max_examples=60, deadline=None)
@given(
    arrays(bool, st.tuples(st.integers(0, 5), st.integers(1, 23), st.integers(1, 23)), elements=st.booleans()),
    st.booleans(),
)
def test_strings_decode_like_pycocotools(masks, make_first_full):
    if len(masks) and make_first_full:
        masks[0] = True  # also the full and the empty mask
    if len(masks) > 1:
        masks[1] = False
    height, width = masks.shape[1:]
    strings = coco_strings(masks)
    runs = runs_from_coco(strings, (height, width))
    np.testing.assert_array_equal(runs.to_dense(), masks)
    from_dense = runs_from_dense(masks)
    for ours, theirs in ((runs.starts, from_dense.starts), (runs.lengths, from_dense.lengths)):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(runs.offsets, from_dense.offsets)
    np.testing.assert_array_equal(runs.areas(), masks.reshape(len(masks), height * width).sum(axis=1))
    assert encode_coco(runs) == strings


def test_long_runs_use_several_characters_and_deltas():
    # Counts above 2**5 and 2**10 take 2 and 3 characters; from the fourth count on, differences are stored
    # (negative ones too). A 300x300 image with a few long runs exercises all of that.
    mask = np.zeros((300, 300), dtype=bool)
    mask[:, 10:12] = True
    mask[5:250, 100:200] = True
    mask[299, 299] = True
    strings = coco_strings(mask[None])
    counts, offsets = decode_coco_counts(strings, (300, 300))
    assert counts.sum() == 300 * 300 and offsets.tolist() == [0, len(counts)]
    np.testing.assert_array_equal(runs_from_coco(strings, (300, 300)).to_dense()[0], mask)


def test_label_maps_give_one_mask_per_segment():
    labels = np.array([[0, 0, 1], [2, 0, 1]])
    runs = runs_from_labels(labels)
    np.testing.assert_array_equal(runs.to_dense(), np.stack([labels == s for s in range(3)]))
    assert runs.areas().tolist() == [3, 2, 1]


def test_select_keeps_the_chosen_masks_in_order():
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[0, 0, 0], masks[1, 1:3, 1:3], masks[2, 3, :] = True, True, True
    picked = runs_from_dense(masks).select(np.array([True, False, True]))
    np.testing.assert_array_equal(picked.to_dense(), masks[[0, 2]])
    assert empty_runs((4, 4)).to_dense().shape == (0, 4, 4)


@pytest.mark.parametrize(
    ("strings", "message"),
    [
        ([b"d0"], "covers 20 pixels, not 5x5"),  # a valid string of a 20-pixel mask
        ([b"5", b"~"], "outside the COCO alphabet"),
        ([b"2P"], "ends inside a count"),  # 'P' (32 + 48) carries the continuation bit
        ([b"5", b""], "string 1 is empty"),
    ],
)
def test_corrupt_strings_are_rejected_by_name(strings, message):
    with pytest.raises(RleError, match=message):
        runs_from_coco(strings, (5, 5))
