"""SAM's automatic generator with levels and FMA-WSSS's changes, on a tiny random SAM and on hand-made logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from scipy import ndimage

from tests.test_models_sam import TINY
from wsss_core.masks.occupation import occupation_filter
from wsss_core.masks.sam_generator import LevelledMaskGenerator, remove_small_regions
from wsss_core.models.compat import ensure_torchvision
from wsss_core.models.sam import build_sam_from_config

ensure_torchvision()
from segment_anything import SamAutomaticMaskGenerator, SamPredictor  # noqa: E402


@pytest.fixture(scope="module")
def sam():
    return build_sam_from_config(**TINY, seed=0, device="cpu").sam


def random_image(height: int = 40, width: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def decode(record: dict) -> np.ndarray:
    return mask_utils.decode(record["segmentation"]).astype(bool)


def square_logits(*squares: tuple[int, int, int, int], size: int = 8) -> torch.Tensor:
    """(1, 3, size, size) mask logits: +10 inside each level's square (top, left, bottom, right), -10 outside."""
    logits = torch.full((1, len(squares), size, size), -10.0)
    for level, (top, left, bottom, right) in enumerate(squares):
        logits[0, level, top:bottom, left:right] = 10.0
    return logits


def test_small_holes_are_filled_and_small_islands_dropped():
    mask = np.zeros((7, 7), dtype=bool)
    mask[0:5, 0:5] = True
    mask[2, 2] = False  # a one-pixel hole
    mask[6, 6] = True  # a one-pixel island
    filled, changed = remove_small_regions(mask, 2, "holes")
    assert changed and filled[2, 2] and filled[6, 6]
    cleaned, changed = remove_small_regions(filled, 2, "islands")
    expected = np.zeros((7, 7), dtype=bool)
    expected[0:5, 0:5] = True
    assert changed and np.array_equal(cleaned, expected)
    assert remove_small_regions(expected, 2, "islands") == (expected, False)
    two_small = np.zeros((5, 5), dtype=bool)
    two_small[0, 0], two_small[3:5, 3:5] = True, True  # both below 10: the larger one stays
    kept, _ = remove_small_regions(two_small, 10, "islands")
    assert kept.sum() == 4 and kept[4, 4]


@pytest.mark.parametrize(("bonus", "levels"), [(0.0, [0, 1]), (0.1, [0, 1, 2])])
def test_whole_masks_pass_a_lower_iou_threshold(sam, bonus, levels):
    generator = LevelledMaskGenerator(sam, whole_iou_bonus=bonus, pred_iou_thresh=0.86, stability_score_thresh=0.92)
    logits = square_logits((1, 1, 3, 3), (1, 1, 5, 5), (1, 1, 7, 7))
    iou_preds = torch.tensor([[0.90, 0.95, 0.80]])  # the whole mask fails 0.86 unless 0.1 is added
    data = generator.select_masks(logits, iou_preds, np.array([[2.0, 2.0]]), [0, 0, 8, 8], (8, 8))
    assert data["level"].tolist() == levels
    assert data["iou_preds"].tolist() == pytest.approx([0.90, 0.95, 0.80][: len(levels)])  # stored unshifted
    assert data["boxes"].tolist()[-1] == [1, 1, 2 * len(levels), 2 * len(levels)]


@pytest.mark.parametrize(("bonus", "winner"), [(0.0, 1), (1.0, 2)])
def test_whole_masks_win_the_per_crop_nms(sam, monkeypatch, bonus, winner):
    generator = LevelledMaskGenerator(sam, whole_nms_bonus=bonus, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    # A part (IoU 0.95) and a whole mask (IoU 0.90) whose boxes overlap far beyond box_nms_thresh 0.7.
    logits = square_logits((0, 0, 1, 1), (0, 0, 7, 7), (0, 0, 8, 7))[:, 1:]
    batch = generator.select_masks(logits, torch.tensor([[0.95, 0.90]]), np.array([[3.0, 3.0]]), [0, 0, 8, 8], (8, 8))
    batch["level"] = torch.tensor([1, 2])
    monkeypatch.setattr(generator, "_process_batch", lambda *args: batch)
    generator.point_grids = [np.array([[0.5, 0.5]])]
    data = generator._process_crop(random_image(8, 8), [0, 0, 8, 8], 0, (8, 8))
    assert data["level"].tolist() == [winner]


def test_levels_are_sams_multimask_outputs_and_the_rest_is_sams_generator(sam):
    options = dict(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    image = random_image()
    ours = LevelledMaskGenerator(sam, **options).generate(image)
    theirs = SamAutomaticMaskGenerator(sam, output_mode="coco_rle", **options).generate(image)
    assert len(ours) == 9 * 3  # no NMS suppression: all three masks of all nine points
    assert [{k: v for k, v in r.items() if k not in ("level", "kept")} for r in ours] == theirs
    assert sorted(r["level"] for r in ours) == [0] * 9 + [1] * 9 + [2] * 9
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    for record in ours[:6]:  # each record's mask is output number `level` for its point
        masks, _, _ = predictor.predict(np.array(record["point_coords"]), np.array([1]), multimask_output=True)
        np.testing.assert_array_equal(decode(record), masks[record["level"]])


def test_kept_marks_the_occupation_filter_result(sam):
    options = dict(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    records = LevelledMaskGenerator(sam, occupation_threshold=0.3, **options).generate(random_image(seed=1))
    masks = np.stack([decode(r) for r in records])
    flat = masks.reshape(len(masks), -1).astype(np.int64)
    levels = np.array([r["level"] for r in records])
    expected = occupation_filter(levels, flat.sum(axis=1), lambda rows, cols: flat[rows] @ flat[cols].T, 0.3)
    assert [r["kept"] for r in records] == expected.tolist()
    assert all(r["kept"] for r in records if r["level"] == 2) and not all(r["kept"] for r in records)


def test_small_region_cleanup_runs_without_opencv(sam):
    options = dict(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    records = LevelledMaskGenerator(sam, min_mask_region_area=6, **options).generate(random_image(seed=2))
    assert records
    eight = np.ones((3, 3), dtype=bool)
    for record in records:
        mask = decode(record)
        assert record["area"] == mask.sum()
        islands, n = ndimage.label(mask, structure=eight)
        if n > 1:
            assert np.bincount(islands.ravel())[1:].min() >= 6
        holes, n_holes = ndimage.label(~mask, structure=eight)
        if n_holes:
            assert np.bincount(holes.ravel())[1:].min() >= 6


def test_an_image_where_every_mask_fails_the_thresholds_gives_no_records(sam):
    # Nothing passes predicted IoU > 1; with crops, SAM's own generator fails here on an empty crop.
    generator = LevelledMaskGenerator(sam, points_per_side=2, pred_iou_thresh=1.0, crop_n_layers=1)
    assert generator.generate(random_image(seed=3)) == []
