"""Mask storage: bytes per image of the sam_masks artifact versus the reference format, on the same masks.

The reference (FMA-WSSS) keeps one pickle per image of SAM's records with uncompressed RLE
(`output_mode="uncompressed_rle"`). Here the same records -- ~100 SAM-like masks per 500x375 image: smooth blobs,
20% whole objects, 35% parts, 45% subparts, covering each pixel about 3 times -- also go into the artifact (parquet
parts with COCO-compressed RLE, zstd), in the same run. The artifact is read back and compared mask by mask: the
storage is lossless.

    .venv/bin/python benchmarks/sam_storage.py [--images 20] [--masks 100]
"""

from __future__ import annotations

import argparse
import json
import pickle
import tempfile
from pathlib import Path

import numpy as np


def sam_like_masks(rng: np.random.Generator, height: int, width: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, H, W) smooth blob masks with irregular outlines and their levels (2 whole, 1 part, 0 subpart)."""
    import torch
    import torch.nn.functional as F

    levels = np.ascontiguousarray(np.sort(rng.choice(3, size=count, p=[0.45, 0.35, 0.2]))[::-1])
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    masks = np.zeros((count, height, width), dtype=bool)
    noise = F.interpolate(
        torch.from_numpy(rng.standard_normal((count, 1, 6, 6)).astype(np.float32)),
        size=(height, width),
        mode="bicubic",
        align_corners=False,
    )[:, 0].numpy()
    for i, level in enumerate(levels):
        while not masks[i].any():  # a blob may fall outside the image: draw again
            scale = {2: (0.1, 0.3), 1: (0.04, 0.1), 0: (0.015, 0.04)}[int(level)]  # radii, fractions of the sides
            ry, rx = rng.uniform(*scale, size=2) * (height, width)
            cy, cx, angle = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            u, v = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
            masks[i] = (u / rx) ** 2 + (v / ry) ** 2 + 0.35 * noise[i] < 1.0
    return masks, levels


def sam_records(masks: np.ndarray, levels: np.ndarray, rng: np.random.Generator, uncompressed: bool) -> list[dict]:
    """Records as SamAutomaticMaskGenerator writes them (uncompressed or COCO RLE), plus level and kept."""
    import torch

    from wsss_core.models.compat import ensure_torchvision

    ensure_torchvision()
    from segment_anything.utils.amg import coco_encode_rle, mask_to_rle_pytorch

    height, width = masks.shape[1:]
    rles = mask_to_rle_pytorch(torch.from_numpy(masks))
    records = []
    for mask, rle, level in zip(masks, rles, levels, strict=True):
        ys, xs = np.nonzero(mask)
        records.append(
            {
                "segmentation": rle if uncompressed else coco_encode_rle(rle),
                "area": int(mask.sum()),
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())],
                "predicted_iou": float(np.float32(rng.uniform(0.86, 1.0))),
                "point_coords": [[float(rng.uniform(0, width)), float(rng.uniform(0, height))]],
                "stability_score": float(np.float32(rng.uniform(0.92, 1.0))),
                "crop_box": [0, 0, width, height],
                "level": int(level),
                "kept": bool(rng.random() < 0.5),
            }
        )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--masks", type=int, default=100)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    args = parser.parse_args()

    from wsss_core.hashing import sha256_bytes
    from wsss_core.masks.records import MaskSet, records_to_table
    from wsss_core.masks.writer import MaskWriter
    from wsss_core.provenance import make_provenance

    rng = np.random.default_rng(0)
    images = [sam_like_masks(rng, args.height, args.width, args.masks) for _ in range(args.images)]
    ids = [f"img_{i:05d}" for i in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        reference_bytes = 0
        for image_id, (masks, levels) in zip(ids, images, strict=True):
            path = tmp / "pickles" / f"{image_id}.pkl"
            path.parent.mkdir(exist_ok=True)
            with open(path, "wb") as handle:
                pickle.dump(sam_records(masks, levels, np.random.default_rng(1), uncompressed=True), handle)
            reference_bytes += path.stat().st_size

        writer = MaskWriter(
            "train",
            image_ids=ids,
            image_sha256=[sha256_bytes(i.encode()) for i in ids],
            sizes=np.array([[args.height, args.width]] * args.images),
            provenance=make_provenance("sam_masks", {"benchmark": True}),
            scratch_root=tmp / "scratch",
        )
        for index, (masks, levels) in enumerate(images):
            records = sam_records(masks, levels, np.random.default_rng(1), uncompressed=False)
            writer.write(index, records_to_table(ids[index], records))
        split = writer.commit_into(tmp / "sam_masks" / "train")
        ours = sum(f.stat().st_size for f in split.iterdir())
        parts = sum(f.stat().st_size for f in split.glob("part-*.parquet"))
        mask_set = MaskSet(split)
        lossless = all(
            np.array_equal(mask_set.read(image_id, kept_only=False).masks, masks)
            for image_id, (masks, _) in zip(ids, images, strict=True)
        )
    mean_masks = float(np.mean([m.reshape(len(m), -1).sum(axis=1).mean() for m, _ in images]))
    print(
        json.dumps(
            {
                "images": args.images,
                "masks_per_image": args.masks,
                "image_size": [args.height, args.width],
                "mean_mask_area_px": round(mean_masks),
                "reference_pickle_bytes_per_image": reference_bytes / args.images,
                "artifact_bytes_per_image": ours / args.images,
                "artifact_mask_parts_bytes_per_image": parts / args.images,
                "ratio_artifact_to_reference": ours / reference_bytes,
                "lossless": lossless,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
