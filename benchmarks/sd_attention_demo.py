"""Does a random-weight Stable Diffusion's self-attention group the demo's objects? DiCLIP's VCE on a stand-in SD.

DiCLIP fuses the self-attention of one Stable Diffusion UNet pass (VCE, refined by ACR) into CLIP's CAMs. The demo
has no trained SD; the only stand-in within its time budget is a small random-weight pipeline of SD's own layout
(benchmarks/sd_cache.py's `small_pipeline`, weights seeded with 0). This script measures, as
benchmarks/caa_affinity.py does for the demo CLIP, how much of each object cell's affinity row lands on cells of its
own GT class (`same_class_share`), averaged over the object cells of the first --images train images:
  - the softmax self-attention of DiCLIP's `vce_block` (up_blocks.1.attentions.2), heads averaged, on its own grid;
  - ACR (wsss_core/cam/diclip/acr.py) on that block's resized q k^T, before its clustering (thresholded, heads 1 and
    2 chained) and in full, on the ACR grid (DiCLIP: 20 x 20, its CLIP's token grid);
  - the softmax self-attention of `refine_block` (up_blocks.3.attentions.1), `refine_heads` averaged, which the
    recursive refinement propagates the CAMs along;
  - on each of those grids: a spatial blur (a Gaussian of 1.5 cells), the baseline an affinity must beat, and a
    uniform affinity (chance: the share of the image the class covers);
Each cell is labelled by the GT class at its centre; outline pixels (255) match nothing. The "spread" column is the
mean effective number of cells an object cell's row covers (exp of its entropy), as a share of the grid: near 100 %,
the affinity is almost uniform and cannot group anything, whatever its share.

The SD input is built as DiCLIP's training-free CAM builds it (wsss_core/cam/diclip/cams.py): the 128 px demo image
normalised and bilinearly upsampled to --size (default: DiCLIP's `input_size`, 320), de-normalised to uint8
(`sd_image`), then `vce_pass` with DiCLIP's timestep, scheduler steps and noise seed at that size. For the first image
the ACR affinity is checked against the product's own `diffusion_maps`.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/sd_attention_demo.py [--images 20] [--size 320] [--acr-grid 20]

Reads the dataset index artifacts/index/<split>.parquet (run `dvc repro prepare` first). The demo CLIP's own attention
on the same measure: benchmarks/caa_affinity.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))  # benchmarks/ is not a package: its siblings are imported as top-level modules

from caa_affinity import same_class_share, spatial_blur  # noqa: E402
from sd_cache import small_pipeline  # noqa: E402

if TYPE_CHECKING:
    from wsss_core.cam.diclip.cams import DiclipSettings
    from wsss_core.models.diffusion import SdHandle

BLUR_SIGMA = 1.5  # cells, caa_affinity.spatial_blur's default


def cell_labels(mask: np.ndarray, cells: int) -> np.ndarray:
    """(cells²,) GT class at the centre of each cell of a cells x cells grid laid over `mask`; 255 becomes -1, so
    outline cells count as their own class and match nothing (as in caa_affinity.py)."""
    centres = [np.minimum(((np.arange(cells) + 0.5) * side).astype(np.int64) // cells, side - 1) for side in mask.shape]
    labels = mask[np.ix_(*centres)].reshape(-1).astype(np.int64)
    labels[labels == 255] = -1
    return labels


def without_empty_rows(affinity: np.ndarray) -> tuple[np.ndarray, int]:
    """ACR can leave a row all zero (every entry under its threshold); such a row says nothing, so it is made
    uniform (chance) rather than a division by zero. Returns the matrix and how many rows were replaced."""
    empty = affinity.sum(axis=1) <= 0
    if not empty.any():
        return affinity, 0
    affinity = affinity.copy()
    affinity[empty] = 1.0
    return affinity, int(empty.sum())


def spread(affinity: np.ndarray, labels: np.ndarray) -> float:
    """Mean, over object cells, of exp(entropy) of the normalised row as a share of the cells: 100 % is a uniform row
    (an affinity that cannot group anything), a few % a peaked one. Tells a near-uniform attention from a selective
    one that selects the wrong cells."""
    rows = affinity / affinity.sum(axis=1, keepdims=True)
    entropy = -(rows * np.log(np.where(rows > 0, rows, 1.0))).sum(axis=1)
    return float((np.exp(entropy) / len(labels))[labels > 0].mean())


def grid_side(tokens: int) -> int:
    side = int(round(tokens**0.5))
    if side * side != tokens:
        raise ValueError(f"{tokens} tokens do not make a square grid")
    return side


class Shares:
    """Per-row lists of per-image shares, with the grid each row is measured on and its empty-row count."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}
        self.grids: dict[str, int] = {}
        self.empty_rows: dict[str, int] = {}
        self.spreads: dict[str, list[float]] = {}

    def add(self, name: str, affinity: np.ndarray, labels: np.ndarray) -> None:
        affinity, empty = without_empty_rows(np.asarray(affinity, dtype=np.float64))
        self.values.setdefault(name, []).append(same_class_share(affinity, labels))
        self.spreads.setdefault(name, []).append(spread(affinity, labels))
        self.grids[name] = grid_side(len(labels))
        self.empty_rows[name] = self.empty_rows.get(name, 0) + empty

    def add_baselines(self, cells: int, labels: np.ndarray) -> None:
        """Chance and the spatial blur on a grid, for the same images as the rows measured on it."""
        self.add(f"spatial blur ({BLUR_SIGMA} cells), {cells}x{cells}", spatial_blur(cells, cells, BLUR_SIGMA), labels)
        self.add(f"uniform (chance), {cells}x{cells}", np.ones((cells * cells, cells * cells)), labels)

    def print(self) -> None:
        print(f"  {'affinity':62s} {'grid':>7s} {'images':>6s} {'share':>7s} {'spread':>7s}  empty rows")
        # grouped by grid: a row is compared with the chance and blur of its own grid
        for name, values in sorted(self.values.items(), key=lambda item: self.grids[item[0]]):
            grid = f"{self.grids[name]}x{self.grids[name]}"
            print(
                f"  {name:62s} {grid:>7s} {len(values):6d} {100 * np.mean(values):6.1f}% "
                f"{100 * np.mean(self.spreads[name]):6.1f}%  {self.empty_rows[name]}"
            )


def sd_rows(handle: SdHandle, sd_input: np.ndarray, settings: DiclipSettings, acr_grid: int) -> dict[str, np.ndarray]:
    """The SD affinities of one image: one VCE pass with DiCLIP's arguments (as `diffusion_maps` passes them)."""
    from wsss_core.cam.diclip.acr import acr_affinity
    from wsss_core.models.diffusion import vce_pass

    recorders = vce_pass(
        handle,
        sd_input,
        blocks=list(dict.fromkeys([settings.vce_block, settings.refine_block])),
        logit_grid=acr_grid,
        timestep_index=settings.timestep_index,
        num_inference_steps=settings.inference_steps,
        size=(settings.input_size, settings.input_size),
        seed=settings.noise_seed,
    )
    vce, refine = recorders[settings.vce_block], recorders[settings.refine_block]
    acr = dict(
        heads=settings.vce_heads,
        threshold=settings.acr_threshold,
        iterations=settings.acr_iterations,
    )
    logits = vce.resized_logits[None]
    return {
        f"SD {settings.vce_block} softmax attention (all heads)": vce.probabilities.mean(0).numpy(),
        # rounds=0 leaves ACR's chained, thresholded map before the cluster averaging: what the clustering starts from
        f"ACR without clustering (heads {list(settings.vce_heads)} chained)": acr_affinity(
            logits, acr_grid, rounds=0, **acr
        )[0].numpy(),
        "ACR (DiCLIP's affinity R)": acr_affinity(logits, acr_grid, rounds=settings.acr_rounds, **acr)[0].numpy(),
        f"SD {settings.refine_block} softmax attention (heads {list(settings.refine_heads)})": refine.probabilities[
            list(settings.refine_heads)
        ]
        .mean(0)
        .numpy(),
    }


def check_against_product(
    handle: SdHandle, pixels: torch.Tensor, settings: DiclipSettings, acr_grid: int, acr: np.ndarray
) -> None:
    """The ACR affinity computed here must be the product's own (`diffusion_maps`): the rows measure DiCLIP's path."""
    from wsss_core.cam.diclip.cams import diffusion_maps

    product, _ = diffusion_maps(handle, pixels, settings, acr_grid)
    if not np.allclose(product[0].numpy(), acr, atol=1e-6):
        raise AssertionError("the ACR affinity differs from wsss_core.cam.diclip.cams.diffusion_maps'")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20, help="the first N images of the split")
    parser.add_argument("--split", default="train")
    parser.add_argument("--size", type=int, default=None, help="side SD is fed (default: DiCLIP's input_size, 320)")
    parser.add_argument("--acr-grid", type=int, default=None, help="ACR's grid (default: size // 16, DiCLIP's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    from wsss_core.cam.diclip.cams import _MEAN, _STD, DiclipSettings, sd_image
    from wsss_core.cam.excel.cams import network_input
    from wsss_core.data.base import read_image, read_mask
    from wsss_core.data.index import read_index
    from wsss_core.models.diffusion import load_sd_pipeline

    settings = DiclipSettings()
    settings = dataclasses.replace(settings, input_size=args.size or settings.input_size)
    acr_grid = args.acr_grid or settings.input_size // 16  # DiCLIP's CLIP is a ViT-B/16: 320 px -> 20 x 20

    shares = Shares()
    with tempfile.TemporaryDirectory() as scratch:
        handle = load_sd_pipeline(small_pipeline(Path(scratch) / "sd"), device="cpu")
        built = time.perf_counter() - start
        samples = read_index(f"artifacts/index/{args.split}.parquet").samples[: args.images]
        for number, sample in enumerate(samples):
            image, mask = read_image(sample.image_path), read_mask(sample.mask_path)
            # DiCLIP's input: normalised, upsampled to input_size, then back to uint8 for the VAE (cams.py)
            pixels = network_input(image, _MEAN, _STD, settings.input_size, "cpu")
            rows = sd_rows(handle, sd_image(pixels[0]), settings, acr_grid)
            if number == 0:
                check_against_product(handle, pixels, settings, acr_grid, rows["ACR (DiCLIP's affinity R)"])
            grids: dict[int, np.ndarray] = {}
            for name, matrix in rows.items():
                cells = grid_side(len(matrix))
                labels = grids.setdefault(cells, cell_labels(mask, cells))
                if (labels > 0).any():  # an image without object cells on this grid says nothing about it
                    shares.add(name, matrix, labels)
            for cells, labels in sorted(grids.items()):
                if (labels > 0).any():
                    shares.add_baselines(cells, labels)

    seconds = time.perf_counter() - start
    print(
        f"random-weight SD (sd_cache.small_pipeline, seed 0) fed {settings.input_size} px (demo images "
        f"{image.shape[0]} px, upsampled), timestep index {settings.timestep_index}/{settings.inference_steps}, "
        f"noise seed {settings.noise_seed}, ACR grid {acr_grid}x{acr_grid}; {len(samples)} {args.split} images"
    )
    print("share of an object cell's affinity row on cells of its own class:")
    shares.print()
    print(f"{seconds:.0f} s ({built:.0f} s building and loading the pipeline), {args.threads} threads")


if __name__ == "__main__":
    main()
