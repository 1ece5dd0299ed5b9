"""The simple seed rule: a background score competes with the class CAMs, and each pixel takes the argmax.

CLIP-ES (and the methods built on it) score background as (1 - max_k CAM_k) ** alpha; older pipelines use a
constant threshold. Class 0 is background; foreground ids are 1..254 so the labels fit in uint8 next to the
ignore value 255.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BACKGROUND_MODES = ("power", "threshold")

# Bilinear resizing of maps in [0, 1] can overshoot by float rounding; anything beyond this is a real bug.
_RANGE_TOLERANCE = 1e-5


def _as_cams(cams: np.ndarray) -> np.ndarray:
    cams = np.asarray(cams)
    if cams.ndim != 3:
        raise ValueError(f"cams must have shape (K, H, W), got {cams.shape}")
    if cams.dtype.kind != "f":
        cams = cams.astype(np.float32)
    if cams.size and not np.isfinite(cams).all():
        raise ValueError("cams contain NaN or infinite values")
    return cams


def background_score(cams: np.ndarray, mode: str, value: float) -> np.ndarray:
    """Background score (H, W) for CAMs (K, H, W) in [0, 1].

    mode "power": (1 - max_k cams) ** value (the CLIP-ES alpha; all ones when K == 0);
    mode "threshold": `value` everywhere.
    """
    if mode not in BACKGROUND_MODES:
        raise ValueError(f"unknown background mode {mode!r}; expected one of {', '.join(BACKGROUND_MODES)}")
    cams = _as_cams(cams)
    if not np.isfinite(value):
        raise ValueError(f"background {mode} value must be finite, got {value}")
    height, width = cams.shape[1:]
    if mode == "threshold":
        return np.full((height, width), value, dtype=cams.dtype)

    if value < 0:
        raise ValueError(f"background power must be >= 0, got {value}")
    if cams.shape[0] == 0:
        return np.ones((height, width), dtype=cams.dtype)
    low, high = float(cams.min()), float(cams.max())
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        raise ValueError(f"cams must lie in [0, 1] for the power background, got range [{low}, {high}]")
    foreground = np.clip(cams.max(axis=0), 0.0, 1.0)
    return ((1.0 - foreground) ** value).astype(cams.dtype, copy=False)


def check_seed_inputs(
    cams: np.ndarray, class_ids: Sequence[int], bg_score: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate what every seed rule receives: one class id in 1..254 per CAM channel, no duplicates, and a
    background score of the CAMs' spatial size. Returns (class ids, background score) as arrays."""
    ids = np.asarray(class_ids)
    if ids.ndim != 1 or ids.shape[0] != cams.shape[0]:
        raise ValueError(f"class_ids has shape {ids.shape}, expected ({cams.shape[0]},) to match cams {cams.shape}")
    if ids.size and ids.dtype.kind not in "iu":
        raise ValueError(f"class_ids must be integers, got dtype {ids.dtype}")
    out_of_range = ids[(ids < 1) | (ids > 254)]
    if out_of_range.size:
        raise ValueError(f"class_ids must lie in 1..254 (0 is background, 255 ignore), got {out_of_range.tolist()}")
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"class_ids contain duplicates: {ids.tolist()}")
    bg_score = np.asarray(bg_score)
    if bg_score.shape != cams.shape[1:]:
        raise ValueError(f"bg_score has shape {bg_score.shape}, expected {cams.shape[1:]} to match cams")
    return ids, bg_score


def label_from_cams(cams: np.ndarray, class_ids: Sequence[int], bg_score: np.ndarray) -> np.ndarray:
    """uint8 labels (H, W): argmax over [bg_score, cams...] mapped to [0, class_ids...].

    Ties go to the lower index, so background wins a tie with any class, and a class listed earlier wins a tie
    with a later one. With no CAMs (K == 0) every pixel is background.
    """
    cams = _as_cams(cams)
    ids, bg_score = check_seed_inputs(cams, class_ids, bg_score)
    labels = np.zeros(bg_score.shape, dtype=np.uint8)
    if cams.shape[0] == 0:
        return labels
    best = cams.argmax(axis=0)
    best_score = np.take_along_axis(cams, best[None], axis=0)[0]
    foreground = best_score > bg_score  # strict: background is index 0 and wins ties
    labels[foreground] = ids.astype(np.uint8)[best[foreground]]
    return labels


def seeds_from_cams(cams: np.ndarray, class_ids: Sequence[int], mode: str = "power", value: float = 1.0) -> np.ndarray:
    """Seed labels from CAMs with the given background rule (see `background_score` and `label_from_cams`)."""
    return label_from_cams(cams, class_ids, background_score(cams, mode, value))
