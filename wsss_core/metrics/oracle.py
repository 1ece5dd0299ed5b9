"""The GT-selected background setting: an "oracle" figure that must be reported as such, never as the headline.

Several published pipelines choose the background threshold or power by scoring candidates against the very
ground truth they then report on. This sweep reproduces that number for comparison and marks it
`selected_with_gt: True` so it cannot pass for a fair result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from wsss_core.metrics.confusion import ConfusionAccumulator, summarize
from wsss_core.seeding.background import BACKGROUND_MODES, background_score, label_from_cams


def sweep_background(
    cams_and_gts: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    num_classes: int,
    mode: str,
    values: Sequence[float],
) -> dict:
    """mIoU of the seed rule for every candidate background value, in one pass over the data.

    Each item is (cams (K, H, W) in [0, 1], class_ids (K,) in 1..num_classes-1, gt (H, W)); `num_classes` includes
    background (21 for VOC). mode "threshold" uses a constant background score, mode "power" (1 - max cam) ** value.
    The best value is the first one reaching the highest mIoU.
    """
    if mode not in BACKGROUND_MODES:
        raise ValueError(f"unknown background mode {mode!r}; expected one of {', '.join(BACKGROUND_MODES)}")
    values = [float(v) for v in values]
    if not values:
        raise ValueError("values must name at least one candidate background value")

    accumulators = [ConfusionAccumulator(num_classes) for _ in values]
    for index, (cams, class_ids, gt) in enumerate(cams_and_gts):
        cams = np.asarray(cams)
        ids = np.asarray(class_ids)
        too_large = ids[ids >= num_classes]
        if too_large.size:
            raise ValueError(f"item {index}: class_ids {too_large.tolist()} not below num_classes={num_classes}")
        if np.shape(gt) != cams.shape[1:]:
            raise ValueError(f"item {index}: gt shape {np.shape(gt)} does not match cams shape {cams.shape}")
        for value, accumulator in zip(values, accumulators, strict=True):
            labels = label_from_cams(cams, ids, background_score(cams, mode, value))
            accumulator.update(labels, gt)

    class_names = [str(c) for c in range(num_classes)]
    miou_per_value = [summarize(acc.matrix, class_names)["miou"] for acc in accumulators]
    best_value, best_miou = None, None
    for value, miou in zip(values, miou_per_value, strict=True):
        if miou is not None and (best_miou is None or miou > best_miou):
            best_value, best_miou = value, miou
    return {
        "mode": mode,
        "values": values,
        "miou_per_value": miou_per_value,
        "best_value": best_value,
        "best_miou": best_miou,
        "n_images": accumulators[0].n_images,
        "selected_with_gt": True,
    }
