"""DiCLIP's sd_cache stage on CPU: seconds per image of its two phases and the process's peak memory.

Models: a small random-weight Stable Diffusion of SD 1.x/2.x's own layout (four down and up blocks, two layers per
block, three attention layers per cross-attention up block, so DiCLIP's layers up_blocks.1.attentions.2 and
up_blocks.3.attentions.1 exist), 8x narrower than SD (channels 40, 80, 160, 160 against 320, 640, 1280, 1280) with a
small VAE and text encoder, and a random OpenAI ViT-B/16 CLIP (the real architecture: CLIP's cost is real). Phase 1
draws at DiCLIP's 384 px with 45 steps and guidance 10 (stored at 512, Lanczos); phase 2 labels at 320 px (VCE pass,
ACR, fused CLIP, CAA, 10 refinement rounds). SD itself is about 64x this UNet's multiply-adds, so phase 1 carries over
as a ratio, not in seconds; the reference's figures are for a GPU (35 min and 4.8 GB for the VOC cache).

Baseline in the same run: diffusers' own pipeline call for one image (what phase 1 wraps) and the bare VCE pass (what
phase 2 starts with).

    .venv/bin/python benchmarks/sd_cache.py [--images 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SD_LAYOUT = {
    "block_out_channels": (40, 80, 160, 160),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20, 20),  # SD 2.1's heads per resolution
    "cross_attention_dim": 64,
    "norm_num_groups": 8,
}


def small_pipeline(folder: Path) -> Path:
    """A small SD pipeline in diffusers' layout (random weights), saved as a published one is."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.tiny_sd import sd_pipeline

    tokenizer_dir = folder.with_name("tokenizer")
    tokenizer_dir.mkdir(exist_ok=True)
    unet = {"sample_size": 48, **SD_LAYOUT}
    pipeline = sd_pipeline(
        tokenizer_dir, unet=unet, vae_channels=(16, 32, 64, 64), image_size=384, text_width=64, text_mlp=128
    )
    pipeline.save_pretrained(folder)
    return folder


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(function, items) -> tuple[list[float], list]:
    seconds, results = [], []
    for item in items:
        start = time.perf_counter()
        results.append(function(item))
        seconds.append(time.perf_counter() - start)
    return seconds, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from wsss_core.drivers.sd_cache import DrawJob, MaskJob
    from wsss_core.models.diffusion import generate_images, vce_pass
    from wsss_core.params import validate_section
    from wsss_core.params.schema import DICLIP_PROMPT, SD_CACHE_RUN

    with tempfile.TemporaryDirectory() as scratch:
        sd_dir = small_pipeline(Path(scratch) / "sd")
        run = validate_section({"generator": str(sd_dir), "diffusion": str(sd_dir)}, SD_CACHE_RUN, "sd_cache.runs.b")
        prompts = [(DICLIP_PROMPT.replace("{}", "cat"), seed) for seed in range(args.images)]
        start_rss = peak_rss_mib()

        drawer = DrawJob(sd_dir.as_posix(), run["steps"], run["guidance_scale"], run["size"], run["stored_size"])
        drawer = drawer.build("cpu")
        baseline, _ = timed(
            lambda item: generate_images(drawer.handle, [item[0]], [item[1]], steps=45, guidance_scale=10.0,
                                         height=384, width=384, batch_size=1),
            prompts,
        )  # fmt: skip
        draw, pngs = timed(drawer, prompts)
        draw_rss = peak_rss_mib()

        import io

        from PIL import Image

        clip_params = {"arch": "ViT-B-16", "pretrained": None, "checkpoint": None, "sha256": None, "model_cfg": None}
        clip_params.update(random_init=True, seed=0)
        masker = MaskJob(run["masks"], clip_params, sd_dir.as_posix(), ("background", "cat")).build("cpu")
        images = [np.array(Image.open(io.BytesIO(png)).convert("RGB")) for png in pngs]
        blocks = [run["masks"]["vce_block"], run["masks"]["refine_block"]]
        vce, _ = timed(lambda image: vce_pass(masker.generator.sd, image, blocks=blocks, logit_grid=20), images)
        masks, _ = timed(masker, [(image, 1) for image in images])

    figures = {
        "images": args.images,
        "threads": args.threads,
        "draw_s_per_image": round(statistics.median(draw), 2),
        "baseline_pipeline_call_s": round(statistics.median(baseline), 2),
        "draw_over_baseline": round(statistics.median(draw) / statistics.median(baseline), 3),
        "mask_s_per_image": round(statistics.median(masks), 2),
        "baseline_vce_pass_s": round(statistics.median(vce), 2),
        "mask_over_vce_pass": round(statistics.median(masks) / statistics.median(vce), 2),
        "peak_rss_mib": {"start": round(start_rss), "after_draw": round(draw_rss), "end": round(peak_rss_mib())},
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
