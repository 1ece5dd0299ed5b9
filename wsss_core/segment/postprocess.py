"""From class score maps to the final label map: plain argmax, dense CRF, or SAMS with precomputed SAM masks.

SAMS (FMA-WSSS Table 3) refines a segmentation the way it makes seeds: the foreground score maps are averaged inside
each SAM mask, the masks compete with a background score (1 - max)^alpha, and masks are painted whole. At test time
no image-level labels may be used, so the classes competing are those the network's own argmax predicts somewhere
in the image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

POSTPROCESSING = ("none", "crf", "sams")


def argmax_labels(probabilities: np.ndarray) -> np.ndarray:
    """uint8 (H, W) class index of the highest score in (K, H, W)."""
    if probabilities.ndim != 3 or not 1 <= probabilities.shape[0] <= 255:
        raise ValueError(f"probabilities must have shape (K, H, W) with 1 <= K <= 255, got {probabilities.shape}")
    return probabilities.argmax(axis=0).astype(np.uint8)


def crf_labels(image: np.ndarray, probabilities: np.ndarray, crf_options: dict[str, Any]) -> np.ndarray:
    """Dense-CRF refined labels (H, W); every pixel keeps a class (no confidence cut to 255 at test time)."""
    from wsss_core.seeding.crf import crf_refine

    labels, _ = crf_refine(image, probabilities.astype(np.float32), **crf_options, confidence=0.0)
    return labels


def sams_refined_labels(probabilities: np.ndarray, masks, alpha: float) -> np.ndarray:
    """SAMS labels (H, W) from the predicted classes' probabilities and the image's SAM masks (an ImageMasks)."""
    from wsss_core.seeding.sams import sams_labels

    predicted = argmax_labels(probabilities)
    present = [int(c) for c in np.unique(predicted) if c != 0]
    if not present:
        return predicted  # nothing but background predicted: no class for the masks to take
    return sams_labels(probabilities[present], present, masks, alpha)


def postprocess(
    probabilities: np.ndarray,
    method: str,
    *,
    image: np.ndarray | None = None,
    crf_options: dict[str, Any] | None = None,
    masks=None,
    alpha: float = 1.0,
) -> np.ndarray:
    """Final uint8 labels (H, W) from probabilities (K, H, W) with `method` none | crf (needs `image`) | sams (needs
    `masks`, the image's SAM masks)."""
    if method == "none":
        return argmax_labels(probabilities)
    if method == "crf":
        if image is None:
            raise ValueError("crf post-processing needs the RGB image")
        return crf_labels(image, probabilities, crf_options or {})
    if method == "sams":
        if masks is None:
            raise ValueError("sams post-processing needs the image's SAM masks (the sam_masks artifact)")
        return sams_refined_labels(probabilities, masks, alpha)
    raise ValueError(f"unknown post-processing {method!r}; expected one of {', '.join(POSTPROCESSING)}")
