"""SAMS seeding on hand-made masks with answers worked out by hand, and against a plain loop implementation."""

from __future__ import annotations

import numpy as np
import pytest

from wsss_core.masks.records import ImageMasks
from wsss_core.masks.rle import encode_coco, runs_from_coco, runs_from_dense
from wsss_core.seeding.sams import mask_means, paint_masks, sams_labels, sams_scores


def region(rows: slice, cols: slice, size=(4, 4)) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[rows, cols] = True
    return mask


# A 4x4 image: a whole mask on the left half, a part top right, a subpart bottom right.
LEFT, TOP_RIGHT, BOTTOM_RIGHT = (
    region(slice(None), slice(0, 2)),
    region(slice(0, 2), slice(2, 4)),
    region(slice(2, 4), slice(2, 4)),
)
HAND = ImageMasks(np.stack([LEFT, TOP_RIGHT, BOTTOM_RIGHT]), level=[2, 1, 0], score=[0.9, 0.9, 0.9])


def hand_cams() -> np.ndarray:
    cam_3 = np.where(LEFT, 1.0, 0.0)  # class 3 lives on the left
    cam_7 = np.where(TOP_RIGHT, 0.8, 0.0) + np.where(BOTTOM_RIGHT, 0.2, 0.0)  # class 7 top right, weakly below
    return np.stack([cam_3, cam_7]).astype(np.float32)


def test_scores_worked_out_by_hand():
    # Means per mask (class 3, class 7): left (1, 0), top right (0, 0.8), bottom right (0, 0.2).
    # Min-max per class over the masks: class 3 -> 1, 0, 0; class 7 -> 0, 1, 0.25 (x / (max - min + 1e-7)).
    # Background (1 - best) ** 0.6: about 0, 0, and 0.75 ** 0.6 = 0.8415.
    np.testing.assert_allclose(mask_means(hand_cams(), HAND), [[1, 0], [0, 0.8], [0, 0.2]], atol=1e-7)
    scores = sams_scores(hand_cams(), HAND, alpha=0.6)
    np.testing.assert_allclose(scores, [[0, 1, 0], [0, 0, 1], [0.75**0.6, 0, 0.25]], atol=1e-4)


def test_labels_worked_out_by_hand():
    labels = sams_labels(hand_cams(), [3, 7], HAND, alpha=0.6)
    expected = np.zeros((4, 4), dtype=np.uint8)
    expected[:, :2], expected[:2, 2:] = 3, 7  # the weak bottom right loses to background (0.84 > 0.25)
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.uint8 and labels.flags.c_contiguous
    # With alpha 6 the background of the bottom right drops to 0.75 ** 6 = 0.178 < 0.25: class 7 there too.
    assert (sams_labels(hand_cams(), [3, 7], HAND, alpha=6.0)[2:, 2:] == 7).all()


def test_negative_activations_are_clamped_before_averaging():
    cams = np.zeros((1, 4, 4), dtype=np.float32)
    cams[0][TOP_RIGHT] = [1.0, -1.0, 1.0, -1.0]  # mean 0.5 once clamped (0 without clamping)
    cams[0][BOTTOM_RIGHT] = 0.25
    np.testing.assert_allclose(mask_means(cams, HAND)[:, 0], [0.0, 0.5, 0.25])


def test_whole_masks_are_painted_over_parts_and_confident_masks_over_less_confident():
    everything, centre = np.ones((4, 4), dtype=bool), region(slice(1, 3), slice(1, 3))
    masks = ImageMasks(np.stack([everything, centre]), level=[2, 1], score=[0.5, 0.5])
    assert (paint_masks(masks, np.array([1, 2]), np.array([0.1, 0.9])) == 1).all()  # the whole wins, level first
    same_level = ImageMasks(np.stack([everything, centre]), level=[1, 1], score=[0.5, 0.5])
    painted = paint_masks(same_level, np.array([1, 2]), np.array([0.2, 0.9]))
    assert (painted[1:3, 1:3] == 2).all() and painted[0, 0] == 1  # the more confident centre is on top
    tie = paint_masks(same_level, np.array([1, 2]), np.array([0.5, 0.5]))
    assert (tie[1:3, 1:3] == 2).all()  # a tie keeps the later mask on top, like a stable sort painted in order


def test_uncovered_pixels_and_degenerate_inputs_are_background():
    only_left = ImageMasks(LEFT[None], level=[2], score=[1.0])
    # One mask: min-max leaves every class at 0, so background (1 - 0) ** alpha wins; the rest is uncovered.
    assert (sams_labels(hand_cams(), [3, 7], only_left, 0.6) == 0).all()
    assert (sams_labels(np.zeros((0, 4, 4)), [], HAND, 0.6) == 0).all()  # no classes present
    no_masks = ImageMasks(np.zeros((0, 4, 4), dtype=bool), level=[], score=[])
    assert (sams_labels(hand_cams(), [3, 7], no_masks, 0.6) == 0).all()


def reference_sams(cams: np.ndarray, class_ids, masks: np.ndarray, levels: np.ndarray, alpha: float) -> np.ndarray:
    """SAMS written plainly, mask by mask and pixel by pixel, as the paper states it."""
    cams = np.maximum(cams, 0)
    means = np.array([[cam[mask].mean() if mask.any() else 0.0 for cam in cams] for mask in masks]).reshape(
        len(masks), -1
    )
    nonempty = masks.reshape(len(masks), -1).any(axis=1)
    low, high = means[nonempty].min(axis=0), means[nonempty].max(axis=0)
    scores = np.where(nonempty[:, None], (means - low) / (high - low + 1e-7), 0.0)
    choices = [np.concatenate(([(1 - row.max()) ** alpha], row)) for row in scores]
    labels = [([0, *class_ids][int(np.argmax(c))], c.max()) for c in choices]
    seed = np.zeros(masks.shape[1:], dtype=np.uint8)
    for index in sorted(range(len(masks)), key=lambda i: (levels[i], labels[i][1])):
        seed[masks[index]] = labels[index][0]
    return seed


@pytest.mark.parametrize("seed", range(6))
def test_equals_the_plain_loop_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    height, width, count = rng.integers(5, 30), rng.integers(5, 30), rng.integers(2, 12)
    yy, xx = np.mgrid[:height, :width]
    centres, radii = rng.random((count, 2)) * (height, width), rng.integers(2, 10, count)
    masks = (yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2 < radii[:, None, None] ** 2
    levels = rng.integers(0, 3, count)
    class_ids = sorted(rng.choice(np.arange(1, 21), size=rng.integers(1, 4), replace=False).tolist())
    cams = rng.normal(0.3, 0.4, size=(len(class_ids), height, width)).astype(np.float32)
    expected = reference_sams(cams, class_ids, masks, levels, 0.7)
    dense = ImageMasks(masks, level=levels, score=np.ones(count))
    np.testing.assert_array_equal(sams_labels(cams, class_ids, dense, 0.7), expected)
    from_strings = ImageMasks(
        None, levels, np.ones(count), runs=runs_from_coco(encode_coco(runs_from_dense(masks)), (height, width))
    )
    np.testing.assert_array_equal(sams_labels(cams, class_ids, from_strings, 0.7), expected)


@pytest.mark.parametrize(
    ("cams", "class_ids", "alpha", "message"),
    [
        (np.zeros((2, 4, 4)), [3], 0.6, "do not match the 2 maps"),
        (np.zeros((1, 4, 4)), [0], 0.6, "distinct integers in 1..254"),
        (np.zeros((2, 4, 4)), [5, 5], 0.6, "distinct integers in 1..254"),
        (np.zeros((1, 4, 5)), [3], 0.6, "cams are 4x5, the masks 4x4"),
        (np.full((1, 4, 4), np.nan), [3], 0.6, "NaN"),
        (np.zeros((1, 4, 4)), [3], -1.0, "alpha must be"),
    ],
)
def test_bad_inputs_are_named(cams, class_ids, alpha, message):
    with pytest.raises(ValueError, match=message):
        sams_labels(cams, class_ids, HAND, alpha)
