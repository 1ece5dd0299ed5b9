"""How semantic is the affinity CAA propagates CAMs along? A diagnostic of a CLIP on a dataset with GT masks.

CAA (CLIP-ES) spreads each CAM along an affinity built from the attention of the last `cams.caa_layers` blocks
(or, with `cams.affinity_source: features`, from their token similarity). It can only help if a patch's affinity
falls mostly on patches of its own object. For every image this script labels each patch by the GT class at its
centre and prints, averaged over the object patches of the first --images images, the share of each patch's
affinity row that lands on patches of the same class:
  - for each block's attention alone, and for the last `caa_layers` blocks as CAA uses them;
  - for the feature affinity of the same blocks (`cams.feature_power`);
  - for a plain spatial blur (a Gaussian of one and a half patches), the baseline an affinity must beat;
  - for a uniform affinity (every patch alike): the share of the image the class covers, i.e. chance.

    .venv/bin/python benchmarks/caa_affinity.py [--params params.yaml] [--split train] [--images 30]

Reads `models.clip` and the CAA settings of `cams` from the params file and
the dataset index `artifacts/index/<split>.parquet` (run `dvc repro prepare demo_clip` first).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def same_class_share(affinity: np.ndarray, patch_labels: np.ndarray) -> float:
    """Mean, over object patches (label > 0), of the share of the patch's affinity row on patches of its class."""
    rows = affinity / affinity.sum(axis=1, keepdims=True)
    same = patch_labels[:, None] == patch_labels[None, :]
    objects = patch_labels > 0
    return float((rows * same).sum(axis=1)[objects].mean())


def spatial_blur(height: int, width: int, sigma: float = 1.5) -> np.ndarray:
    """(h*w, h*w) Gaussian of the distance between cells: an affinity that knows only where a cell is."""
    rows, cols = np.divmod(np.arange(height * width), width)
    distance2 = (rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2
    return np.exp(-distance2 / (2 * sigma**2))


def main() -> None:
    from wsss_core.cam.caa import attention_affinity, trace_affinity
    from wsss_core.cam.clip_es import ClipEsSettings
    from wsss_core.data.base import read_image, read_mask
    from wsss_core.data.index import read_index
    from wsss_core.models.clip_visual import VisualRunner, prepare_image
    from wsss_core.models.loading import clip_from_params
    from wsss_core.params import load_params

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--run", default="caa", help="the cams.runs entry whose CAA settings are used")
    args = parser.parse_args()

    params = load_params(args.params)
    cams = params["cams"]["runs"][args.run]
    clip = clip_from_params(params["models"]["clip"], "cpu")
    runner = VisualRunner(clip)
    layers, caa_layers, patch = runner.num_layers, cams["caa_layers"], clip.patch_size
    by_features = ClipEsSettings(
        affinity_source="features",
        sinkhorn_rounds=cams["sinkhorn_rounds"],
        affinity_power=cams["affinity_power"],
        feature_power=cams["feature_power"],
    )

    def affinity(blocks: list[torch.Tensor]) -> np.ndarray:
        stacked = torch.stack(blocks)
        return attention_affinity(stacked, rounds=cams["sinkhorn_rounds"], power=cams["affinity_power"]).numpy()

    shares: dict[str, list[float]] = {}
    for sample in read_index(f"artifacts/index/{args.split}.parquet").samples[: args.images]:
        pixels = prepare_image(clip, read_image(sample.image_path))
        with torch.no_grad():
            trace = runner.forward(pixels, capture_layers=range(-layers, 0))
        height, width = trace.grid
        mask = read_mask(sample.mask_path)
        # The GT pixel under each patch centre (the image was resized to a multiple of the patch size).
        centres = [
            np.minimum((np.arange(cells) * patch + patch // 2) * side // resized, side - 1)
            for cells, side, resized in zip(trace.grid, mask.shape, pixels.shape[-2:], strict=True)
        ]
        labels = mask[np.ix_(*centres)].reshape(-1).astype(np.int64)
        labels[labels == 255] = -1  # outline patches count as their own class, matching nothing
        if not (labels > 0).any():
            continue

        attentions = [trace.blocks[index].attention[0].float() for index in range(layers)]

        affinities = {f"block {index + 1}": affinity([attentions[index]]) for index in range(layers)}
        affinities[f"CAA attention (last {caa_layers})"] = affinity(attentions[-caa_layers:])
        affinities[f"CAA features (last {caa_layers})"] = trace_affinity(
            [trace.blocks[index] for index in range(layers - caa_layers, layers)], by_features
        ).numpy()
        affinities["spatial blur (sigma 1.5 patches)"] = spatial_blur(height, width)
        affinities["uniform (chance)"] = np.ones((height * width, height * width))
        for name, matrix in affinities.items():
            shares.setdefault(name, []).append(same_class_share(matrix, labels))

    print(f"share of an object patch's affinity on its own class ({len(shares['uniform (chance)'])} images):")
    for name, values in shares.items():
        print(f"  {name:34s} {100 * np.mean(values):5.1f} %")


if __name__ == "__main__":
    main()
