"""SAMS, the SAM-based seeding module of FMA-WSSS (section 4.2): one class per quasi-superpixel.

Given class maps (CAMs, or a segmenter's foreground scores) at image size and an image's masks:
  1. clamp the maps at 0; each mask's score for class c is the mean of map c over the mask;
  2. each class's scores are min-max normalised across the image's masks: (s - min) / (max - min + 1e-7);
  3. a mask's background score is (1 - its largest class score) ** alpha;
  4. the mask takes the class with the highest score, background winning ties;
  5. masks are painted in ascending (level, confidence) order, confidence being the winning score, so whole masks
     and, within a level, more confident masks end on top; pixels no mask covers are background.

Everything works on the masks' run-length form (see wsss_core.masks.rle): a mask's sum is the difference of a
prefix sum at the two ends of each of its runs, and painting touches each covered pixel once per mask. No step
loops over masks or pixels in Python.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wsss_core.masks.records import ImageMasks

EPSILON = 1e-7  # the reference's min-max guard


def _check_cams(cams: np.ndarray, masks: ImageMasks) -> np.ndarray:
    cams = np.asarray(cams)
    if cams.ndim != 3:
        raise ValueError(f"cams must have shape (P, H, W), got {cams.shape}")
    if tuple(cams.shape[1:]) != tuple(masks.size):
        raise ValueError(f"cams are {cams.shape[1]}x{cams.shape[2]}, the masks {masks.size[0]}x{masks.size[1]}")
    if cams.size and not np.isfinite(cams).all():
        raise ValueError("cams contain NaN or infinite values")
    return cams


def mask_means(cams: np.ndarray, masks: ImageMasks) -> np.ndarray:
    """(M, P) mean of each map, clamped at 0, over each mask (0 for an empty mask)."""
    cams = _check_cams(cams, masks)
    runs = masks.runs
    n_maps, height, width = cams.shape
    # Column-major pixel order, as the runs count; float64 keeps prefix differences exact enough.
    column = np.maximum(cams, 0).transpose(0, 2, 1).reshape(n_maps, height * width).astype(np.float64)
    prefix = np.zeros((n_maps, height * width + 1))
    np.cumsum(column, axis=1, out=prefix[:, 1:])
    run_sums = prefix[:, runs.starts + runs.lengths] - prefix[:, runs.starts]
    before = np.zeros((n_maps, len(runs.starts) + 1))
    np.cumsum(run_sums, axis=1, out=before[:, 1:])
    sums = before[:, runs.offsets[1:]] - before[:, runs.offsets[:-1]]
    areas = runs.areas()
    return np.divide(sums, areas, out=np.zeros_like(sums), where=areas > 0).T


def sams_scores(cams: np.ndarray, masks: ImageMasks, alpha: float) -> np.ndarray:
    """(M, 1 + P) per-mask scores: column 0 background, then one column per map, as in steps 1-3."""
    if not (np.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
    means = mask_means(cams, masks)
    nonempty = masks.runs.areas() > 0
    scores = np.zeros_like(means)
    if nonempty.any() and means.shape[1]:
        low, high = means[nonempty].min(axis=0), means[nonempty].max(axis=0)
        scores[nonempty] = (means[nonempty] - low) / (high - low + EPSILON)
    best = scores.max(axis=1) if scores.shape[1] else np.zeros(len(scores))
    return np.concatenate(((1.0 - best)[:, None] ** alpha, scores), axis=1)


def paint_masks(masks: ImageMasks, values: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """(H, W) uint8 map of each mask's value, higher (level, confidence) on top, 0 where no mask is.

    Ties in both keep the later mask on top (the reference paints a stable sort in order).
    """
    runs = masks.runs
    height, width = runs.size
    count = runs.n_masks
    order = np.lexsort((np.arange(count), np.asarray(confidence), masks.level))
    rank = np.empty(count, dtype=np.int64)
    rank[order] = np.arange(1, count + 1)
    top = np.zeros(height * width, dtype=np.int64)
    np.maximum.at(top, runs.pixels(), np.repeat(rank, runs.areas()))
    lookup = np.zeros(count + 1, dtype=np.uint8)
    lookup[rank] = values
    return np.ascontiguousarray(lookup[top].reshape(width, height).T)


def sams_labels(cams: np.ndarray, class_ids: Sequence[int], masks: ImageMasks, alpha: float) -> np.ndarray:
    """uint8 (H, W) seed labels in {0} U class_ids from maps (P, H, W) at image size, by the SAMS rule.

    cams: any range (clamped at 0 here); channel p belongs to class class_ids[p].
    masks: the image's quasi-superpixels (read_image_masks' default); every mask given takes part.
    alpha: background power (FMA-WSSS: 0.6 coarse and 0.7 fine seeds on VOC, 1.0 on COCO).
    """
    ids = np.asarray(class_ids)
    if ids.ndim != 1 or len(ids) != np.shape(cams)[0]:
        raise ValueError(f"class_ids {ids.tolist()} do not match the {np.shape(cams)[0]} maps")
    if ids.size and (ids.dtype.kind not in "iu" or ids.min() < 1 or ids.max() > 254 or len(set(ids)) != len(ids)):
        raise ValueError(f"class_ids must be distinct integers in 1..254 (0 is background), got {ids.tolist()}")
    scores = sams_scores(cams, masks, alpha)
    winner = scores.argmax(axis=1)  # index 0, background, wins ties
    confidence = scores[np.arange(len(scores)), winner]
    labels = np.concatenate(([0], ids)).astype(np.uint8)[winner]
    return paint_masks(masks, labels, confidence)
