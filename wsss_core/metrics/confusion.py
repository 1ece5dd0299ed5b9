"""Confusion matrices over a split and the scores derived from them (mIoU and friends).

Convention: class 0 is background, 1..C-1 foreground, 255 marks pixels to ignore. A matrix has one row per GT
class and one column per predicted class plus a last "unlabelled" column for pixels the prediction left at 255
(for example low-confidence CRF seeds): those pixels count against recall and IoU but not against precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _check_label_array(name: str, array: np.ndarray) -> None:
    if array.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integer class labels, got dtype {array.dtype}")


def _check_num_classes(num_classes: int, ignore_index: int) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (background included), got {num_classes}")
    if 0 <= ignore_index < num_classes:
        raise ValueError(f"ignore_index {ignore_index} collides with a class id in [0, {num_classes})")


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Count (GT class, predicted class) pixel pairs of one image.

    `num_classes` includes background. Returns int64 of shape (num_classes, num_classes + 1): rows are GT classes,
    columns predicted classes, the last column pixels predicted as `ignore_index` (unlabelled). GT pixels outside
    [0, num_classes) are skipped. A predicted value outside [0, num_classes) that is not `ignore_index` raises.
    """
    _check_num_classes(num_classes, ignore_index)
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match ground-truth shape {gt.shape}")
    _check_label_array("prediction", pred)
    _check_label_array("ground truth", gt)

    pred = pred.astype(np.int64, copy=False)
    gt = gt.astype(np.int64, copy=False)
    unlabelled = pred == ignore_index
    bad = ((pred < 0) | (pred >= num_classes)) & ~unlabelled
    if bad.any():
        bad_values = np.unique(pred[bad])
        shown = ", ".join(str(v) for v in bad_values[:10])
        raise ValueError(
            f"prediction holds value(s) {shown} outside [0, {num_classes}) that are not the unlabelled value "
            f"{ignore_index}"
        )

    valid = (gt >= 0) & (gt < num_classes)
    columns = np.where(unlabelled, num_classes, pred)
    width = num_classes + 1
    flat = gt[valid] * width + columns[valid]
    counts = np.bincount(flat, minlength=num_classes * width)
    return counts.reshape(num_classes, width).astype(np.int64, copy=False)


class ConfusionAccumulator:
    """Sums per-image confusion matrices over a split (mIoU is computed on the sum, not averaged per image)."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        _check_num_classes(num_classes, ignore_index)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
        self.n_images = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image's prediction and ground truth."""
        self.matrix += confusion_matrix(pred, gt, self.num_classes, self.ignore_index)
        self.n_images += 1


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise division that yields NaN (without a warning) where the denominator is zero."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _json_float(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _mean_where_defined(values: np.ndarray) -> float | None:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else None


def summarize(matrix: np.ndarray, class_names: Sequence[str]) -> dict:
    """Scores of a (C, C + 1) confusion matrix, as a JSON-ready dict (None where a value is undefined).

    Per class: IoU = TP / (TP + FP + FN), precision = TP / (TP + FP), recall = TP / (TP + FN) and the CLIP-ES
    confusion ratio FP / TP, where FN includes GT pixels left unlabelled. Classes absent from GT get None for
    these four. Means are over classes present in GT, skipping classes whose value is undefined there (precision
    of a class never predicted, FP / TP of a class with no true positive). pixel_accuracy and coverage are
    fractions of valid GT pixels that are correct and labelled.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[1] != matrix.shape[0] + 1:
        raise ValueError(f"confusion matrix must have shape (C, C + 1), got {matrix.shape}")
    num_classes = matrix.shape[0]
    if len(class_names) != num_classes:
        raise ValueError(f"got {len(class_names)} class names for a confusion matrix of {num_classes} classes")
    if matrix.dtype.kind not in "iu" or (matrix < 0).any():
        raise ValueError("confusion matrix must hold non-negative integer counts")

    labelled = matrix[:, :num_classes].astype(np.int64)
    true_pos = np.diag(labelled)
    gt_pixels = matrix.sum(axis=1).astype(np.int64)
    pred_pixels = labelled.sum(axis=0)
    false_pos = pred_pixels - true_pos
    false_neg = gt_pixels - true_pos
    in_gt = gt_pixels > 0

    absent = np.where(in_gt, 1.0, np.nan)  # multiplies to NaN for classes absent from GT
    iou = _ratio(true_pos, true_pos + false_pos + false_neg) * absent
    precision = _ratio(true_pos, pred_pixels) * absent
    recall = _ratio(true_pos, gt_pixels) * absent
    fp_over_tp = _ratio(false_pos, true_pos) * absent

    total = int(gt_pixels.sum())
    per_class = [
        {
            "class": str(class_names[c]),
            "iou": _json_float(iou[c]),
            "precision": _json_float(precision[c]),
            "recall": _json_float(recall[c]),
            "fp_over_tp": _json_float(fp_over_tp[c]),
            "gt_pixels": int(gt_pixels[c]),
            "pred_pixels": int(pred_pixels[c]),
            "in_gt": bool(in_gt[c]),
        }
        for c in range(num_classes)
    ]
    return {
        "miou": _mean_where_defined(iou),
        "pixel_accuracy": _json_float(_ratio(true_pos.sum(), total)),
        "mean_precision": _mean_where_defined(precision),
        "mean_recall": _mean_where_defined(recall),
        "coverage": _json_float(_ratio(pred_pixels.sum(), total)),
        "fp_over_tp": _mean_where_defined(fp_over_tp),
        "num_classes_in_gt": int(in_gt.sum()),
        "per_class": per_class,
    }
