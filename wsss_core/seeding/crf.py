"""Dense-CRF seeds (CLIP-ES): refine [background, class CAMs] with a fully connected CRF and keep confident pixels.

The CRF (pydensecrf, Krähenbühl & Koltun) smooths the per-pixel class scores with a Gaussian kernel on position
(sxy 1, compat 3) and a bilateral kernel on position and colour (sxy 67, srgb 3, compat 4), 10 mean-field
iterations. Pixels whose refined probability stays below 0.95 become 255 (ignored when training on the seeds).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wsss_core.seeding.background import check_seed_inputs

IGNORE = 255


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3) RGB, got dtype {image.dtype} shape {image.shape}")
    return np.ascontiguousarray(image)


def _check_probs(probs: np.ndarray, height: int, width: int) -> np.ndarray:
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[1:] != (height, width):
        raise ValueError(f"probs must have shape (K, {height}, {width}) to match the image, got {probs.shape}")
    if not 1 <= probs.shape[0] <= IGNORE:
        raise ValueError(f"probs must hold 1..{IGNORE} classes (labels are uint8, 255 = ignore), got {probs.shape[0]}")
    if probs.dtype.kind != "f" or not np.isfinite(probs).all():
        raise ValueError(f"probs must be finite floats, got dtype {probs.dtype}")
    if (probs < 0).any():
        raise ValueError("probs must be non-negative (softmax-like class scores)")
    return probs


def crf_refine(
    image: np.ndarray,
    probs: np.ndarray,
    *,
    gaussian_sxy: float = 1,
    gaussian_compat: float = 3,
    bilateral_sxy: float = 67,
    bilateral_srgb: float = 3,
    bilateral_compat: float = 4,
    iterations: int = 10,
    confidence: float = 0.95,
    unary: str = "scores",
    gt_prob: float = 0.7,
) -> tuple[np.ndarray, np.ndarray]:
    """Dense CRF over class scores; returns (labels, crf_probs).

    Arguments:
      image: uint8 (H, W, 3) RGB.
      probs: (K, H, W) non-negative class scores, background at index 0. They need not sum to 1: the unary is
        -log(clip(probs, 1e-5, 1)) (pydensecrf's unary_from_softmax), exactly what CLIP-ES feeds it.
      unary: "scores" as above, or "labels": the scores' argmax given probability gt_prob and the other classes
        the rest, equally (pydensecrf's unary_from_labels, zero_unsure false), as WeakTr refines its seeds.
      confidence: pixels whose CRF probability of the winning class is below this become 255.

    Returns labels (H, W) uint8 holding the argmax index 0..K-1 or 255, and crf_probs (K, H, W) float32.
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    image = _check_image(image)
    height, width = image.shape[:2]
    probs = _check_probs(probs, height, width)
    num_classes = probs.shape[0]
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")

    if unary == "labels":
        from pydensecrf.utils import unary_from_labels

        if not 0.0 < gt_prob < 1.0:
            raise ValueError(f"gt_prob must be in (0, 1), got {gt_prob}")
        if num_classes == 1:  # nothing to decide (and pydensecrf would divide by zero)
            return np.zeros((height, width), np.uint8), np.ones((1, height, width), np.float32)
        energy = unary_from_labels(probs.argmax(axis=0), num_classes, gt_prob=gt_prob, zero_unsure=False)
    elif unary == "scores":
        energy = unary_from_softmax(probs.astype(np.float32))
    else:
        raise ValueError(f"unary must be scores or labels, got {unary!r}")
    unary = np.ascontiguousarray(energy, dtype=np.float32)
    crf = dcrf.DenseCRF2D(width, height, num_classes)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=image, compat=bilateral_compat)
    crf_probs = np.asarray(crf.inference(iterations), dtype=np.float32).reshape(num_classes, height, width)

    labels = crf_probs.argmax(axis=0).astype(np.uint8)
    labels[crf_probs.max(axis=0) < confidence] = IGNORE
    return labels, crf_probs


def crf_seeds(
    image: np.ndarray,
    cams: np.ndarray,
    class_ids: Sequence[int],
    bg_score: np.ndarray,
    **crf_options: float,
) -> np.ndarray:
    """CRF seed labels (H, W) uint8: 0 background, `class_ids` for the CAM channels, 255 low confidence.

    Arguments:
      image: uint8 (H, W, 3) RGB.
      cams: (P, H, W) CAMs in [0, 1] at image size, one per entry of `class_ids` (foreground ids 1..254).
      bg_score: (H, W) background score, e.g. `background_score(cams, "power", alpha)`.
      crf_options: keyword arguments of `crf_refine` (kernel parameters, iterations, confidence).

    Like CLIP-ES, the CRF input is the plain stack [bg_score, cams...], not renormalised to sum to 1.
    Deviation: CLIP-ES passes the BGR image minus the Caffe mean cast to uint8 (negative values wrap around);
    here the CRF sees the uint8 RGB image, the colours its bilateral kernel (srgb 3) is meant to compare.
    """
    cams = np.asarray(cams)
    if cams.ndim != 3:
        raise ValueError(f"cams must have shape (P, H, W), got {cams.shape}")
    ids, bg_score = check_seed_inputs(cams, class_ids, bg_score)

    probs = np.concatenate([bg_score[None].astype(np.float32), cams.astype(np.float32)], axis=0)
    indices, _ = crf_refine(image, probs, **crf_options)
    lookup = np.full(256, IGNORE, dtype=np.uint8)
    lookup[: len(ids) + 1] = np.concatenate([[0], ids]).astype(np.uint8)
    return lookup[indices]
