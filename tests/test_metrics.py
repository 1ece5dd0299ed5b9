"""Confusion matrix, summary scores, report files and the oracle background sweep, on hand-checked examples."""

from __future__ import annotations

import csv
import json

import matplotlib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from wsss_core.metrics import ConfusionAccumulator, confusion_matrix, summarize, sweep_background, write_report
from wsss_core.metrics import report as report_module
from wsss_core.seeding.background import label_from_cams

NAMES3 = ["background", "cat", "dog"]

# 3x3 example, classes 0..2. GT 255 at (2, 0) is ignored, GT 7 at (2, 2) is out of range and skipped.
# Valid (gt, pred) pairs: (0,0) (0,1) (1,1) | (1,1) (1,U) (2,2) | (2,0)
GT_3X3 = np.array([[0, 0, 1], [1, 1, 2], [255, 2, 7]], dtype=np.uint8)
PRED_3X3 = np.array([[0, 1, 1], [1, 255, 2], [0, 0, 2]], dtype=np.uint8)
MATRIX_3X3 = np.array(
    [
        # pred: bg cat dog unlabelled
        [1, 1, 0, 0],  # gt bg
        [0, 2, 0, 1],  # gt cat
        [1, 0, 1, 0],  # gt dog
    ]
)


def test_confusion_matrix_hand_example():
    matrix = confusion_matrix(PRED_3X3, GT_3X3, num_classes=3)
    assert matrix.dtype == np.int64
    assert matrix.shape == (3, 4)
    np.testing.assert_array_equal(matrix, MATRIX_3X3)


@pytest.mark.filterwarnings("error")
def test_summarize_hand_example():
    # bg:  TP 1, FP 1 (dog pixel called bg), FN 1  -> IoU 1/3, P 1/2, R 1/2, FP/TP 1
    # cat: TP 2, FP 1 (bg pixel called cat), FN 1 (left unlabelled) -> IoU 2/4, P 2/3, R 2/3, FP/TP 1/2
    # dog: TP 1, FP 0, FN 1 -> IoU 1/2, P 1, R 1/2, FP/TP 0
    summary = summarize(MATRIX_3X3, NAMES3)
    per_class = {row["class"]: row for row in summary["per_class"]}
    assert per_class["background"]["iou"] == pytest.approx(1 / 3)
    assert per_class["cat"]["iou"] == pytest.approx(1 / 2)
    assert per_class["dog"]["iou"] == pytest.approx(1 / 2)
    assert [per_class[n]["precision"] for n in NAMES3] == pytest.approx([1 / 2, 2 / 3, 1])
    assert [per_class[n]["recall"] for n in NAMES3] == pytest.approx([1 / 2, 2 / 3, 1 / 2])
    assert [per_class[n]["fp_over_tp"] for n in NAMES3] == pytest.approx([1, 1 / 2, 0])
    assert [per_class[n]["gt_pixels"] for n in NAMES3] == [2, 3, 2]
    assert [per_class[n]["pred_pixels"] for n in NAMES3] == [2, 3, 1]
    assert all(row["in_gt"] for row in summary["per_class"])

    assert summary["miou"] == pytest.approx(4 / 9)
    assert summary["pixel_accuracy"] == pytest.approx(4 / 7)
    assert summary["coverage"] == pytest.approx(6 / 7)
    assert summary["mean_precision"] == pytest.approx(13 / 18)
    assert summary["mean_recall"] == pytest.approx(5 / 9)
    assert summary["fp_over_tp"] == pytest.approx(1 / 2)
    assert summary["num_classes_in_gt"] == 3
    json.dumps(summary, allow_nan=False)  # JSON-ready as is


def test_ignored_and_out_of_range_gt_pixels_are_skipped_whatever_the_prediction():
    changed = PRED_3X3.copy()
    changed[2, 0] = 1  # under GT 255
    changed[2, 2] = 255  # under GT 7
    np.testing.assert_array_equal(confusion_matrix(changed, GT_3X3, 3), MATRIX_3X3)


def test_unlabelled_prediction_lowers_recall_and_iou_but_not_precision():
    gt = np.array([[1, 1]])
    full = summarize(confusion_matrix(np.array([[1, 1]]), gt, 2), ["bg", "cat"])["per_class"][1]
    partial_matrix = confusion_matrix(np.array([[1, 255]]), gt, 2)
    np.testing.assert_array_equal(partial_matrix, [[0, 0, 0], [0, 1, 1]])
    partial = summarize(partial_matrix, ["bg", "cat"])
    cat = partial["per_class"][1]
    assert (full["precision"], full["recall"], full["iou"]) == (1.0, 1.0, 1.0)
    assert (cat["precision"], cat["recall"], cat["iou"]) == (1.0, 0.5, 0.5)
    assert partial["coverage"] == pytest.approx(0.5)


@pytest.mark.filterwarnings("error")
def test_class_absent_from_gt_is_excluded_from_the_mean():
    # 4 classes; GT holds only 0 and 1; one bg pixel is predicted as class 3 (absent from GT).
    # bg IoU = 1/2, class 1 IoU = 1; including class 3 (IoU 0) would give 1/2 instead of 3/4.
    matrix = confusion_matrix(np.array([[0, 3, 1]]), np.array([[0, 0, 1]]), 4)
    summary = summarize(matrix, ["bg", "a", "b", "c"])
    assert summary["miou"] == pytest.approx(3 / 4)
    assert summary["num_classes_in_gt"] == 2
    absent = summary["per_class"][3]
    assert absent["in_gt"] is False
    assert absent["pred_pixels"] == 1
    assert (absent["iou"], absent["precision"], absent["recall"], absent["fp_over_tp"]) == (None, None, None, None)
    assert summary["per_class"][2]["iou"] is None


@pytest.mark.filterwarnings("error")
def test_undefined_precision_and_ratio_are_none_and_skipped_in_means():
    # GT [cat, dog], pred [cat, cat]: dog is never predicted (precision 0/0) and has no TP (FP/TP undefined).
    summary = summarize(confusion_matrix(np.array([[1, 1]]), np.array([[1, 2]]), 3), NAMES3)
    cat, dog = summary["per_class"][1], summary["per_class"][2]
    assert (cat["iou"], cat["precision"], cat["fp_over_tp"]) == (0.5, 0.5, 1.0)
    assert (dog["iou"], dog["precision"], dog["recall"], dog["fp_over_tp"]) == (0.0, None, 0.0, None)
    assert summary["miou"] == pytest.approx(0.25)
    assert summary["mean_precision"] == pytest.approx(0.5)
    assert summary["fp_over_tp"] == pytest.approx(1.0)


@pytest.mark.filterwarnings("error")
def test_summary_of_an_empty_matrix_is_all_none():
    summary = summarize(np.zeros((2, 3), dtype=np.int64), ["bg", "cat"])
    assert summary["miou"] is None
    assert summary["pixel_accuracy"] is None
    assert summary["coverage"] is None
    assert summary["num_classes_in_gt"] == 0


def test_invalid_prediction_value_raises_naming_it():
    with pytest.raises(ValueError, match=r"\b3\b"):
        confusion_matrix(np.array([[0, 3]]), np.array([[0, 1]]), 3)
    with pytest.raises(ValueError, match="-1"):
        confusion_matrix(np.array([[0, -1]]), np.array([[0, 1]]), 3)


def test_shape_mismatch_raises_with_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        confusion_matrix(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8), 3)


def test_bad_inputs_to_summarize_and_float_labels_raise():
    with pytest.raises(ValueError, match="class names"):
        summarize(MATRIX_3X3, ["bg", "cat"])
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        summarize(np.zeros((3, 3), np.int64), NAMES3)
    with pytest.raises(ValueError, match="dtype float"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 2), np.uint8), 3)


@settings(max_examples=40, deadline=None)
@given(
    gt=arrays(np.int16, (4, 5), elements=st.sampled_from([0, 1, 2, 3, 255, 9])),
    pred=arrays(np.int16, (4, 5), elements=st.sampled_from([0, 1, 2, 3, 255])),
)
def test_confusion_matrix_matches_a_pixel_loop(gt, pred):
    expected = np.zeros((4, 5), dtype=np.int64)
    for g, p in zip(gt.ravel(), pred.ravel(), strict=True):
        if 0 <= g < 4:
            expected[g, 4 if p == 255 else p] += 1
    np.testing.assert_array_equal(confusion_matrix(pred, gt, 4), expected)


def test_accumulator_equals_matrix_of_concatenated_images():
    rng = np.random.default_rng(0)
    images = [
        (rng.choice([0, 1, 2, 3, 4, 255], size=shape), rng.choice([0, 1, 2, 3, 4, 255, 17], size=shape))
        for shape in [(7, 5), (3, 9), (6, 6)]
    ]
    accumulator = ConfusionAccumulator(5)
    for pred, gt in images:
        accumulator.update(pred, gt)
    concatenated_pred = np.concatenate([pred.ravel() for pred, _ in images])
    concatenated_gt = np.concatenate([gt.ravel() for _, gt in images])
    assert accumulator.n_images == 3
    np.testing.assert_array_equal(accumulator.matrix, confusion_matrix(concatenated_pred, concatenated_gt, 5))
    assert accumulator.matrix.sum() == np.isin(concatenated_gt, range(5)).sum()


# --- report files ---


def test_write_report_files_match_the_summary(tmp_path):
    returned = write_report(tmp_path / "eval", MATRIX_3X3, NAMES3, extra={"n_images": 2, "oracle": {"best": 1 / 3}})
    out = tmp_path / "eval"
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "metrics.json", "per_class.csv"]

    summary = summarize(MATRIX_3X3, NAMES3)
    text = (out / "metrics.json").read_text()
    assert text.endswith("}\n")
    metrics = json.loads(text)
    assert list(metrics) == sorted(metrics)
    for key in ("miou", "pixel_accuracy", "mean_precision", "mean_recall", "coverage", "fp_over_tp"):
        assert metrics[key] == round(summary[key], 6)
    assert metrics["miou"] == 0.444444
    assert metrics["n_images"] == 2
    assert metrics["oracle"] == {"best": 0.333333}
    assert "per_class" not in metrics
    assert returned["miou"] == summary["miou"] and returned["n_images"] == 2

    with open(out / "per_class.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["class", "iou", "precision", "recall", "fp_over_tp", "gt_pixels", "pred_pixels"]
    assert [row["class"] for row in rows] == NAMES3
    assert rows[0]["iou"] == "0.333333"
    assert rows[2]["pred_pixels"] == "1"

    png = (out / "confusion.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert b"matplotlib" not in png.lower() and b"Software" not in png


def test_report_leaves_undefined_cells_empty(tmp_path):
    matrix = confusion_matrix(np.array([[0, 3, 1]]), np.array([[0, 0, 1]]), 4)
    write_report(tmp_path, matrix, ["bg", "a", "b", "c"])
    with open(tmp_path / "per_class.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    assert (rows[3]["iou"], rows[3]["precision"], rows[3]["pred_pixels"]) == ("", "", "1")


def test_report_files_are_byte_identical_across_runs_and_rc_settings(tmp_path):
    write_report(tmp_path / "first", MATRIX_3X3, NAMES3, extra={"n_images": 1}, title="val")
    with matplotlib.rc_context({"font.size": 17, "image.cmap": "magma"}):
        write_report(tmp_path / "second", MATRIX_3X3, NAMES3, extra={"n_images": 1}, title="val")
    for name in ("metrics.json", "per_class.csv", "confusion.png"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name


def test_report_for_81_coco_classes(tmp_path):
    rng = np.random.default_rng(1)
    matrix = rng.integers(0, 50, size=(81, 82)) + np.pad(np.diag(rng.integers(500, 1000, size=81)), ((0, 0), (0, 1)))
    names = [f"class_{index:02d}" for index in range(81)]
    summary = write_report(tmp_path, matrix, names)
    assert summary["num_classes_in_gt"] == 81
    assert 0 < json.loads((tmp_path / "metrics.json").read_text())["miou"] < 1
    assert len((tmp_path / "per_class.csv").read_text().splitlines()) == 82
    assert (tmp_path / "confusion.png").stat().st_size > 10_000


def test_failed_write_keeps_the_previous_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    write_report(tmp_path, MATRIX_3X3, NAMES3)
    previous = (tmp_path / "confusion.png").read_bytes()

    def broken_plot(path, *args):
        path.write_bytes(b"half a png")
        raise RuntimeError("disk full")

    monkeypatch.setattr(report_module, "_save_confusion_png", broken_plot)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(tmp_path, MATRIX_3X3, NAMES3)
    assert (tmp_path / "confusion.png").read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "metrics.json", "per_class.csv"]


def test_extra_cannot_overwrite_computed_metrics(tmp_path):
    with pytest.raises(ValueError, match="miou"):
        write_report(tmp_path, MATRIX_3X3, NAMES3, extra={"miou": 0.99})


# --- oracle background sweep ---


def _ramp_images():
    # One class (id 1) whose CAM rises left to right; GT is background on the left half.
    cams = np.array([[[0.2, 0.4, 0.6, 0.8]]])
    yield cams, np.array([1]), np.array([[0, 0, 1, 1]])
    yield cams, np.array([1]), np.array([[0, 0, 1, 1]])


def test_threshold_sweep_finds_the_threshold_that_splits_the_ramp():
    # t=0.1: all cat -> IoU bg 0, cat 1/2 -> 0.25; t=0.5: exact -> 1; t=0.9: all bg -> bg 1/2, cat 0 -> 0.25.
    result = sweep_background(_ramp_images(), num_classes=2, mode="threshold", values=[0.1, 0.5, 0.9])
    assert result["selected_with_gt"] is True
    assert result["mode"] == "threshold"
    assert result["values"] == [0.1, 0.5, 0.9]
    assert result["miou_per_value"] == pytest.approx([0.25, 1.0, 0.25])
    assert result["best_value"] == 0.5
    assert result["best_miou"] == pytest.approx(1.0)
    assert result["n_images"] == 2  # the generator was consumed once, every image counted
    json.dumps(result, allow_nan=False)


def test_sweep_ties_go_to_the_first_value():
    result = sweep_background(_ramp_images(), num_classes=2, mode="threshold", values=[0.9, 0.1])
    assert result["best_value"] == 0.9


def test_power_sweep_matches_label_from_cams_with_explicit_background():
    rng = np.random.default_rng(3)
    items = []
    for _ in range(3):
        class_ids = np.sort(rng.choice(np.arange(1, 5), size=2, replace=False))
        items.append((rng.random((2, 6, 7)), class_ids, rng.choice([0, 1, 2, 3, 4, 255], size=(6, 7))))
    alphas = [0.5, 1.0, 2.0]
    result = sweep_background(iter(items), num_classes=5, mode="power", values=alphas)

    for alpha, miou in zip(alphas, result["miou_per_value"], strict=True):
        accumulator = ConfusionAccumulator(5)
        for cams, class_ids, gt in items:
            accumulator.update(label_from_cams(cams, class_ids, (1 - cams.max(axis=0)) ** alpha), gt)
        assert miou == summarize(accumulator.matrix, [str(c) for c in range(5)])["miou"]
    assert result["best_miou"] == max(result["miou_per_value"])


def test_sweep_rejects_bad_input():
    with pytest.raises(ValueError, match="power, threshold"):
        sweep_background(_ramp_images(), 2, mode="alpha", values=[1.0])
    with pytest.raises(ValueError, match="at least one"):
        sweep_background(_ramp_images(), 2, mode="power", values=[])
    with pytest.raises(ValueError, match=r"item 0: class_ids \[1\]"):
        sweep_background(_ramp_images(), 1, mode="power", values=[1.0])
