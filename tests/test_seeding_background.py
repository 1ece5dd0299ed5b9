"""The simple seed rule on hand-computed 1x3 maps."""

from __future__ import annotations

import numpy as np
import pytest

from wsss_core.seeding.background import background_score, label_from_cams, seeds_from_cams

# Two classes over a 1x3 image. Per-pixel max: 0.75, 0.5, 0.0.
CAMS = np.array([[[0.75, 0.25, 0.0]], [[0.5, 0.5, 0.0]]], dtype=np.float32)
CLASS_IDS = [3, 7]


def test_power_background_alpha_one_and_two():
    np.testing.assert_array_equal(background_score(CAMS, "power", 1.0), [[0.25, 0.5, 1.0]])
    np.testing.assert_array_equal(background_score(CAMS, "power", 2.0), [[0.0625, 0.25, 1.0]])


def test_power_seeds_alpha_one_background_wins_the_tie():
    # pixel 0: class 3 (0.75) beats bg 0.25; pixel 1: bg 0.5 ties class 7 (0.5) -> bg; pixel 2: bg 1.
    labels = seeds_from_cams(CAMS, CLASS_IDS, mode="power", value=1.0)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, [[3, 0, 0]])


def test_power_seeds_alpha_two():
    # bg becomes 0.0625, 0.25, 1: pixel 1 now goes to class 7 (0.5 > 0.25).
    np.testing.assert_array_equal(seeds_from_cams(CAMS, CLASS_IDS, mode="power", value=2.0), [[3, 7, 0]])


def test_threshold_seeds():
    np.testing.assert_array_equal(background_score(CAMS, "threshold", 0.3), np.full((1, 3), 0.3, np.float32))
    np.testing.assert_array_equal(seeds_from_cams(CAMS, CLASS_IDS, mode="threshold", value=0.3), [[3, 7, 0]])
    np.testing.assert_array_equal(seeds_from_cams(CAMS, CLASS_IDS, mode="threshold", value=0.6), [[3, 0, 0]])


def test_class_ids_mapping_follows_cam_order_and_earlier_class_wins_a_tie():
    cams = np.array([[[0.5, 0.9]], [[0.5, 0.1]]])
    bg = np.zeros((1, 2))
    np.testing.assert_array_equal(label_from_cams(cams, [20, 4], bg), [[20, 20]])
    np.testing.assert_array_equal(label_from_cams(cams[::-1], [4, 20], bg), [[4, 20]])


def test_no_classes_gives_all_background():
    empty = np.zeros((0, 2, 2), dtype=np.float32)
    np.testing.assert_array_equal(background_score(empty, "power", 1.0), np.ones((2, 2)))
    for mode in ("power", "threshold"):
        labels = seeds_from_cams(empty, [], mode=mode, value=0.5)
        assert labels.dtype == np.uint8
        np.testing.assert_array_equal(labels, np.zeros((2, 2)))


def test_label_from_cams_matches_argmax_over_stacked_scores():
    rng = np.random.default_rng(0)
    cams = rng.random((4, 9, 11)).round(1)  # rounding makes ties common
    bg = rng.random((9, 11)).round(1)
    ids = np.array([2, 5, 9, 14])
    expected = np.array([0, *ids])[np.concatenate([bg[None], cams]).argmax(axis=0)]
    np.testing.assert_array_equal(label_from_cams(cams, ids, bg), expected)


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="power, threshold"):
        background_score(CAMS, "sigmoid", 1.0)
    with pytest.raises(ValueError, match=r"1\.\.254.*\[0\]"):
        label_from_cams(CAMS, [0, 7], np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"1\.\.254.*\[255\]"):
        label_from_cams(CAMS, [3, 255], np.zeros((1, 3)))
    with pytest.raises(ValueError, match="class_ids has shape"):
        label_from_cams(CAMS, [3], np.zeros((1, 3)))
    with pytest.raises(ValueError, match="duplicates"):
        label_from_cams(CAMS, [3, 3], np.zeros((1, 3)))
    with pytest.raises(ValueError, match="bg_score has shape"):
        label_from_cams(CAMS, CLASS_IDS, np.zeros((3, 1)))
    with pytest.raises(ValueError, match=r"\(K, H, W\)"):
        background_score(CAMS[0], "power", 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        background_score(CAMS * 2, "power", 1.0)
    with pytest.raises(ValueError, match="NaN"):
        background_score(np.full((1, 1, 1), np.nan), "threshold", 0.5)
