"""SAM mask generation on CPU: seconds per image and where they go, SAM's default batch of points versus larger.

Model part: a small random-weight SAM -- a 2-block ViT encoder (the real ViT-H costs minutes per image on a CPU,
~0.5 s on a GPU) in front of SAM's full-size prompt encoder and mask decoder, at SAM's 1024 input size, so the
per-prompt cost is the real one. The FMA-WSSS grid (32 points per side, one crop layer, downscale 2) is 2048 prompts
per image; the default here is half the side (512 prompts) to keep the run short; prompts per second carry over.
Every prediction goes through the stability score (pred_iou_thresh 0); random weights predict speckled masks that
the 0.92 stability threshold drops, so no time is spent on masks a real model would not produce.

Post-processing part: SAM's small-region clean-up (min area 100), the FMA occupation filter and the record writing,
on ~100 SAM-like masks at 500x375 (smooth blobs, as in sam_storage.py) -- what a real model leaves after NMS.

    .venv/bin/python benchmarks/sam_generation.py [--points-per-side 16] [--batches 64 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from functools import wraps

import numpy as np


def timer(totals: dict, name: str, function):
    @wraps(function)
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - start

    return timed


def generator_for(sam, points_per_side: int, points_per_batch: int):
    from wsss_core.masks.sam_generator import LevelledMaskGenerator

    return LevelledMaskGenerator(
        sam,
        points_per_side=points_per_side,
        points_per_batch=points_per_batch,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.92,
        crop_n_layers=1,
        crop_n_points_downscale_factor=2,
        min_mask_region_area=100,
        whole_iou_bonus=0.1,
        whole_nms_bonus=1.0,
        occupation_threshold=0.3,
    )


def measure_model(sam, image: np.ndarray, points_per_side: int, points_per_batch: int) -> dict:
    generator = generator_for(sam, points_per_side, points_per_batch)
    totals: dict[str, float] = defaultdict(float)
    predictor = generator.predictor
    predictor.set_image = timer(totals, "image_encoder", predictor.set_image)
    predictor.predict_torch = timer(totals, "mask_decoder", predictor.predict_torch)
    generator._process_batch = timer(totals, "batch", generator._process_batch)
    generator._process_crop = timer(totals, "crop", generator._process_crop)
    start = time.perf_counter()
    records = generator.generate(image)
    total = time.perf_counter() - start
    prompts = points_per_side**2 + 4 * (points_per_side // 2) ** 2
    return {
        "points_per_batch": points_per_batch,
        "prompts": prompts,
        "seconds_per_image": round(total, 3),
        "prompts_per_second": round(prompts / total, 1),
        "seconds": {
            "image encoder (image + 4 crops)": round(totals["image_encoder"], 3),
            "mask decoder": round(totals["mask_decoder"], 3),
            "stability score, filtering, boxes, RLE": round(totals["batch"] - totals["mask_decoder"], 3),
            "per-crop NMS": round(totals["crop"] - totals["batch"] - totals["image_encoder"], 3),
            "the rest (cross-crop NMS, records)": round(total - totals["crop"], 3),
        },
        "masks_kept_by_the_thresholds": len(records),
    }


def measure_postprocessing(sam, masks: np.ndarray, levels: np.ndarray, repeats: int) -> dict:
    """The steps after NMS, on the MaskData a real model would leave: clean-up, occupation filter, records."""
    import torch

    from wsss_core.models.compat import ensure_torchvision

    ensure_torchvision()
    from segment_anything.utils.amg import MaskData, batched_mask_to_box, mask_to_rle_pytorch

    generator = generator_for(sam, 2, 64)
    height, width = masks.shape[1:]
    tensor = torch.from_numpy(masks)
    totals: dict[str, float] = defaultdict(float)
    for _ in range(repeats):
        data = MaskData(
            rles=mask_to_rle_pytorch(tensor),
            boxes=batched_mask_to_box(tensor),
            iou_preds=torch.full((len(masks),), 0.9),
            level=torch.as_tensor(levels),
            points=torch.zeros(len(masks), 2, dtype=torch.float64),
            stability_score=torch.full((len(masks),), 0.95),
            crop_boxes=torch.tensor([[0, 0, width, height]] * len(masks)),
        )
        data.to_numpy()
        generator._generate_masks = lambda image, data=data: data
        generator.postprocess_small_regions = timer(totals, "small_regions", type(generator).postprocess_small_regions)
        generator._quasi_superpixels = timer(
            totals, "occupation", type(generator)._quasi_superpixels.__get__(generator)
        )
        start = time.perf_counter()
        records = generator.generate(np.zeros((height, width, 3), dtype=np.uint8))
        totals["total"] += time.perf_counter() - start
    return {
        "masks_in": len(masks),
        "masks_out": len(records),
        "kept": sum(r["kept"] for r in records),
        "seconds": {
            "small-region clean-up (scipy)": round(totals["small_regions"] / repeats, 3),
            "occupation filter": round(totals["occupation"] / repeats, 3),
            "COCO RLE and records": round(
                (totals["total"] - totals["small_regions"] - totals["occupation"]) / repeats, 3
            ),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256], help="64 is SAM's default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from sam_storage import sam_like_masks

    from wsss_core.models.sam import build_sam_from_config

    torch.set_num_threads(args.threads)
    handle = build_sam_from_config(
        encoder_embed_dim=192, encoder_depth=2, encoder_num_heads=3, encoder_global_attn_indexes=[1], device="cpu"
    )
    rng = np.random.default_rng(0)
    image = np.kron(rng.integers(0, 256, size=(15, 20, 3)), np.ones((25, 25, 1))).astype(np.uint8)  # 375x500
    model = [measure_model(handle.sam, image, args.points_per_side, batch) for batch in args.batches]
    masks, levels = sam_like_masks(rng, 375, 500, 100)
    after = measure_postprocessing(handle.sam, masks, levels, args.repeats)
    print(
        json.dumps({"image": [375, 500], "threads": args.threads, "model": model, "post_processing": after}, indent=1)
    )


if __name__ == "__main__":
    main()
