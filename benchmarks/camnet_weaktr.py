"""WeakTr's CAM network: training images per second and peak memory at the reference's settings, and CAM inference
seconds per image with its scales and mirror images.

DeiT-S/16 with random weights (timm's deit_small_patch16_224 config, nothing downloaded; the same cost as the
ImageNet weights), VOC's 20 classes, AAF with reduction 8 and max pooling. One training update is what the loop
does: a batch of 224x224 crops through timm's training transform (RandAugment, random erasing) from 500x375 images,
the three losses, backward, the AdamW update (AMP on CUDA). CAM inference is one 500x375 image at scales 1.0 and
1.2, each with its mirror image, refined, upsampled, min-max normalised (two present classes).

Each phase runs in its own process, so that its peak RSS (CPU) or peak allocation (CUDA) is its own. Prints medians
over --repeats after one warm-up. The reference (VOC, batch 64, 60 epochs of 10,582 images) does 635k images.

    .venv/bin/python benchmarks/camnet_weaktr.py [--batch 64] [--repeats 3] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

REFERENCE_IMAGES = 60 * 10582  # 60 epochs of VOC train_aug


class RandomImages:
    """500x375 random images with 1-3 of VOC's 20 classes, as the training loop reads them."""

    def __init__(self, count: int) -> None:
        import numpy as np
        import torch
        from PIL import Image

        rng = np.random.default_rng(0)
        self.images = [Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)) for _ in range(count)]
        self.targets = []
        for index in range(count):
            target = torch.zeros(20)
            target[rng.choice(20, 1 + index % 3, replace=False)] = 1.0
            self.targets.append(target)

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int):
        return self.images[index]

    def target(self, index: int):
        return self.targets[index]


def _network(device):
    from wsss_core.camnet.weaktr import SETTINGS, build_network
    from wsss_core.params.spec import validate_section

    run = validate_section({"backbone": {"checkpoint": "unused"}}, SETTINGS, "benchmark")  # the reference's defaults
    built = build_network(run, 20, pretrained=False)
    built.network.to(device)
    return run, built


def _peak(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def _timed(function, repeats: int, device) -> list[float]:
    import torch

    function(0)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for index in range(1, repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function(index)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def measure_training(batch: int, repeats: int, device_name: str) -> dict:
    import torch

    from wsss_core.camnet.weaktr_training import losses, make_batch, make_transform
    from wsss_core.models import resolve_device

    device = resolve_device(device_name)
    run, built = _network(device)
    network = built.network.train()
    data = RandomImages(batch)
    transform = make_transform(run, built.mean, built.std)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4, weight_decay=run["weight_decay"])
    use_amp = run["amp"] and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    def step(index: int) -> None:
        images, targets = make_batch(data, range(batch), transform, index)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            loss = losses(network(images.to(device)), targets.to(device))["loss"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    times = _timed(step, repeats, device)
    return {
        "seconds": statistics.median(times),
        "peak_mib": _peak(device),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def measure_cams(repeats: int, device_name: str) -> dict:
    import torch

    from wsss_core.camnet.weaktr import CAM_SETTINGS, cam_generator
    from wsss_core.models import resolve_device
    from wsss_core.params.spec import validate_section

    device = resolve_device(device_name)
    _, built = _network(device)
    generator = cam_generator(built, validate_section({}, CAM_SETTINGS, "benchmark"), device)
    data = RandomImages(1)
    image = __import__("numpy").asarray(data.image(0))
    times = _timed(lambda _: generator(image, [3, 15]), repeats, device)
    return {
        "seconds": statistics.median(times),
        "peak_mib": _peak(device),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--one", metavar="PHASE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = (
            measure_training(args.batch, args.repeats, args.device)
            if args.one == "train"
            else measure_cams(args.repeats, args.device)
        )
        print(json.dumps(result))
        return
    results = {}
    for phase in ("train", "cams"):
        command = [
            sys.executable,
            __file__,
            "--one",
            phase,
            "--batch",
            str(args.batch),
            "--repeats",
            str(args.repeats),
            "--device",
            args.device,
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[phase] = json.loads(output.strip().splitlines()[-1])
    train, cams = results["train"], results["cams"]
    images_per_second = args.batch / train["seconds"]
    hours = REFERENCE_IMAGES / images_per_second / 3600
    print(
        f"WeakTr CAM network, DeiT-S/16, random weights ({train['device']}, {train['threads']} threads, median of "
        f"{args.repeats})"
    )
    print(
        f"training  batch {args.batch} at 224: {train['seconds']:.2f} s/update, {images_per_second:.1f} images/s, "
        f"peak {train['peak_mib']:.0f} MiB; the reference's 60 epochs would take {hours:.1f} h"
    )
    print(f"CAMs      500x375, scales 1.0, 1.2 + flips: {cams['seconds']:.3f} s/image, peak {cams['peak_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
