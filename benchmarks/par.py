"""PAR (wsss_core/refine/par.py): milliseconds of the neighbour weights and of a whole refinement, against a baseline
measured in the same run.

The baseline is the formulation PAR had before: every neighbour gathered by clamped flat indices, and the colour
term built from fresh temporaries. The product takes windows of one replicate-padded copy and works in place on the
neighbours. The script first checks that both give the same bits, then prints medians of --repeats calls per size:
ExCEL's training crops (batch 4, 320 px at its reference settings, 128 px in the demo, [background, 3 classes]) and
one VOC-sized image for CAM refinement.

    .venv/bin/python benchmarks/par.py [--repeats 10] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
from torch.nn import functional as F

from wsss_core.models import resolve_device
from wsss_core.refine import par

SIZES = {  # name: (batch, height, width)
    "ExCEL crops 4x128 (demo)": (4, 128, 128),
    "ExCEL crops 4x320 (reference)": (4, 320, 320),
    "one VOC image 375x500": (1, 375, 500),
}


def baseline_neighbours(x: torch.Tensor, dilations=par.DILATIONS) -> torch.Tensor:
    """Every neighbour by one gather of clamped flat indices (the earlier formulation)."""
    height, width = x.shape[-2:]
    rows = torch.arange(height, device=x.device).view(height, 1)
    cols = torch.arange(width, device=x.device).view(1, width)
    index = torch.stack(
        [
            ((rows + dy * d).clamp(0, height - 1) * width + (cols + dx * d).clamp(0, width - 1)).flatten()
            for d in dilations
            for dy, dx in par.RING
        ]
    )
    return x.flatten(2)[..., index].unflatten(-1, (height, width))


def baseline_weights(images: torch.Tensor, size: tuple[int, int], dilations=par.DILATIONS) -> torch.Tensor:
    images = F.interpolate(images.float(), size=tuple(size), mode="bilinear", align_corners=True)
    neighbours = baseline_neighbours(images, dilations)
    difference = (neighbours - images.unsqueeze(2)).abs()
    spread = neighbours.std(dim=2, keepdim=True)
    colour = (-((difference / (spread + 1e-8) / par.COLOUR_SCALE) ** 2)).mean(dim=1)
    return colour.softmax(dim=1) + par.PLACE_WEIGHT * par.place_weights(dilations, device=images.device).view(
        1, -1, 1, 1
    )


def median_ms(function, repeats: int, device: torch.device) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device {device}, {torch.get_num_threads()} threads, medians of {args.repeats} calls")
    print("| size | weights: baseline ms | weights: product ms | ratio | whole PAR (20 iterations) ms | same bits |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    generator = torch.Generator().manual_seed(0)
    for name, (batch, height, width) in SIZES.items():
        images = torch.randn((batch, 3, height, width), generator=generator).to(device)
        maps = torch.rand((batch, 4, height, width), generator=generator).to(device)
        same = torch.equal(baseline_weights(images, (height, width)), par.par_weights(images, (height, width)))
        base = median_ms(partial(baseline_weights, images, (height, width)), args.repeats, device)
        product = median_ms(partial(par.par_weights, images, (height, width)), args.repeats, device)
        whole = median_ms(partial(par.par_refine, images, maps), max(1, args.repeats // 3), device)
        print(f"| {name} | {base:.1f} | {product:.1f} | {base / product:.2f} | {whole:.1f} | {same} |")


if __name__ == "__main__":
    main()
