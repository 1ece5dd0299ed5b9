"""Why the demo runs no WeakTr: its CAM network, started from the demo CLIP's vision tower, on the demo's 60 training
images, and the mIoU of its seeds (background threshold 0.43, no CRF) against the train ground truth.

Needs the demo's data and CLIP (`dvc repro demo/dvc.yaml:demo_clip prepare`). Each variant trains the product's
`cam_net` code (wsss_core/camnet) from the demo CLIP tower (2 blocks, 128 wide, 8-px patches; 8 attention maps)
and computes its CAMs with and without the patch-affinity refinement:
  reference   WeakTr's settings, scaled to the demo: 60 epochs of batch 16 at 128 px, lr 6e-4 x 16 / 512, timm's
              augmentation (crops of 0.08-1 of the area, RandAugment, random erasing)
  easier      lr 0.03 x 16 / 512, 100 epochs, crops of 0.5-1 of the area, no RandAugment, no random erasing
For comparison, the all-background baseline is 12.2 and CLIP-ES's raw CAMs on the same CLIP 32.5 (reports/demo.md).

    .venv/bin/python benchmarks/weaktr_demo.py [--variant reference --variant easier]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

DEMO_RUN = {
    "backbone": {
        "arch": "vit_base_patch16_clip_224",
        "overrides": {"img_size": 64, "patch_size": 8, "embed_dim": 128, "depth": 2, "num_heads": 4},
        "checkpoint": "artifacts/demo_clip/model.safetensors",
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    },
    "reduction": 2.0,
    "batch_size": 16,
    "augment": {"input_size": 128},
}
VARIANTS = {
    "reference": {},
    "easier": {
        "lr": 0.03,
        "epochs": 100,
        "augment": {"crop_scale": [0.5, 1.0], "auto_augment": None, "random_erasing": 0.0},
    },
}


def _merge(base: dict, changes: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        merged[key] = _merge(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def seed_miou(built, dataset, patch_refine: bool, threshold: float = 0.43) -> float:
    import numpy as np
    import torch
    from PIL import Image

    from wsss_core.camnet.weaktr import cam_generator
    from wsss_core.data.base import read_image
    from wsss_core.metrics.confusion import confusion_matrix, summarize

    generator = cam_generator(
        built, {"scales": [1.0, 1.2], "patch_refine": patch_refine, "amp": True}, torch.device("cpu")
    )
    matrix = np.zeros((dataset.num_classes, dataset.num_classes + 1), np.int64)
    for sample in dataset.samples:
        ids, maps = generator(read_image(sample.image_path), sample.labels)
        scores = np.concatenate([np.full((1, *maps.shape[1:]), threshold, np.float32), maps])
        labels = np.asarray([0, *ids], np.uint8)[scores.argmax(0)]
        matrix += confusion_matrix(labels, np.asarray(Image.open(sample.mask_path)), dataset.num_classes)
    return 100 * summarize(matrix, dataset.class_names)["miou"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", choices=list(VARIANTS))
    args = parser.parse_args()
    from wsss_core.pinned_cpu import pin_cpu

    pin_cpu()  # the demo's training stages run pinned
    import torch

    from wsss_core.camnet.weaktr import SETTINGS, fit
    from wsss_core.data.index import read_index
    from wsss_core.params.spec import validate_section

    dataset = read_index(Path("artifacts/index/train.parquet"))
    print("variant    train s  token  coarse  fine   seeds mIoU: refined  unrefined  (threshold 0.43, train)")
    for name in args.variant or list(VARIANTS):
        run = validate_section(_merge(DEMO_RUN, VARIANTS[name]), SETTINGS, f"variant {name}")
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as work_dir:
            built, curve = fit(run, dataset, device=torch.device("cpu"), work_dir=Path(work_dir), checkpoint_every=1000)
        seconds, last = time.perf_counter() - start, curve[-1]
        refined, unrefined = seed_miou(built, dataset, True), seed_miou(built, dataset, False)
        print(
            f"{name:9s}  {seconds:7.0f}  {last['token_loss']:.3f}  {last['coarse_loss']:.3f}  "
            f"{last['fine_loss']:.3f}  {refined:19.1f}  {unrefined:9.1f}"
        )


if __name__ == "__main__":
    main()
