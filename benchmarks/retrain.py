"""Retraining networks: training images per second and inference seconds per image, demo configuration.

Each network of the registry is built from the first run of params.yaml's `retrain.runs` (its own section when the run
is of that network, the section's defaults otherwise; the WeCLIP head on models.clip, random weights where no file
is at hand: same cost), trained for --steps updates of that run's schedule (batch, crop, optimiser, loss) through the
real training loop on random in-memory images, and run on --images images of the demo size with each prediction
variant's views (scales, flips, resizing, windows); dense CRF is timed separately. Medians after one warm-up update /
image.

    .venv/bin/python benchmarks/retrain.py [--params params.yaml] [--steps 6] [--images 5] [--device auto]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time


def load_clip_for_benchmark(clip_params: dict, device):
    """The demo's CLIP, or the same architecture with random weights when its checkpoint is not there."""
    from wsss_core.models.checkpoints import CheckpointError
    from wsss_core.models.loading import clip_from_params

    try:
        return clip_from_params(clip_params, device)
    except CheckpointError:
        return clip_from_params({**clip_params, "checkpoint": None, "random_init": True}, device)


def random_data(count: int, size: tuple[int, int], num_classes: int):
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, *size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=(count, *size), dtype=np.uint8)
    return list(zip(images, labels, strict=True))


def training_rate(network, settings: dict, data, steps: int, device) -> float:
    """Images per second over `steps` updates after one warm-up update."""
    from wsss_core.segment.train import OptimizerSettings, TrainSettings, train

    schedule, section = settings["schedule"], settings[settings["network"]]
    stamps = []

    def stamp(step: int) -> None:
        _synchronize(device)
        stamps.append(time.perf_counter())

    train_settings = TrainSettings(
        iterations=steps + 1,
        batch_size=schedule["batch_size"],
        crop_size=schedule["crop_size"],
        scale_range=tuple(schedule["scale_range"]),
        flip=schedule["flip"],
        warmup_iterations=0,
        amp=settings["amp"],
        checkpoint_every=10**9,
        loss=section["loss"],
        clip_tau=settings["gradient_clipping"]["tau"],
        clip_patch=settings["gradient_clipping"]["patch"],
    )
    optimizer = OptimizerSettings(
        kind=section["optimizer"],
        lr=section["lr"],
        backbone_lr_scale=section["backbone_lr_scale"],
        head_lr_scale=section["head_lr_scale"],
        weight_decay=section["weight_decay"],
        momentum=section["momentum"],
        nesterov=section["nesterov"],
    )
    with tempfile.TemporaryDirectory() as work_dir:
        train(
            network.module,
            data,
            train_settings,
            optimizer,
            mean=network.mean,
            std=network.std,
            device=device,
            work_dir=work_dir,
            on_step=stamp,
        )
    intervals = [later - earlier for earlier, later in zip(stamps, stamps[1:], strict=False)]
    return schedule["batch_size"] / statistics.median(intervals)


def _synchronize(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def inference_seconds(network, variant: dict, images, device) -> float:
    from wsss_core.segment.infer import InferenceSettings, predict_probabilities

    settings = InferenceSettings(
        scales=tuple(variant["scales"]),
        flip=variant["flip"],
        window=variant["window"],
        stride=variant["stride"],
        amp=variant["amp"],
        unflipped_scales=tuple(variant["unflipped_scales"]),
        resize=variant["resize"],
        input_size=variant["input_size"],
        merge=variant["merge"],
    )
    times = []
    for image in images:
        _synchronize(device)
        start = time.perf_counter()
        predict_probabilities(network.module, image, network.mean, network.std, settings, device)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:] or times)


def crf_seconds(images, num_classes: int, crf_options: dict) -> float:
    import numpy as np

    from wsss_core.segment.postprocess import postprocess

    rng = np.random.default_rng(0)
    times = []
    for image in images:
        scores = rng.random((num_classes, *image.shape[:2])).astype(np.float32)
        probabilities = scores / scores.sum(axis=0)
        start = time.perf_counter()
        postprocess(probabilities, "crf", image=image, crf_options=crf_options)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--networks", nargs="*", help="subset of the registry (default: all)")
    args = parser.parse_args()

    import torch

    from wsss_core.models import resolve_device
    from wsss_core.params import load_params, validate_section
    from wsss_core.params.pipeline import CLIP_NETWORKS
    from wsss_core.params.schema import NETWORK_SECTIONS
    from wsss_core.segment.networks import NETWORKS, build_network

    params = load_params(args.params)
    runs = params["retrain"]["runs"]
    if not runs:
        parser.error(f"{args.params}: retrain.runs is empty; the benchmark takes its schedule from the first run")
    base = next(iter(runs.values()))
    device = resolve_device(args.device)
    size = tuple(params["demo"]["data"]["image_size"])
    num_classes = 7  # background + the demo's six shapes
    images = [image for image, _ in random_data(args.images + 1, size, num_classes)]
    variants = params["retrain"]["predict"]["variants"]
    print(f"device {device}, torch threads {torch.get_num_threads()}, demo images {size[0]}x{size[1]}")
    print("network        train img/s  " + "  ".join(f"infer {name} s/img" for name in variants))
    clip = None
    for name in args.networks or NETWORKS:
        settings = copy.deepcopy(base)
        if settings["network"] != name:
            settings = {**settings, "network": name, name: validate_section({}, NETWORK_SECTIONS[name], name)}
        section = settings[name]
        if name not in CLIP_NETWORKS and section.get("checkpoint") is None:
            section["random_init"] = True  # same cost as ImageNet weights
        if name in CLIP_NETWORKS and clip is None:
            clip = load_clip_for_benchmark(params["models"]["clip"], device)
        network = build_network(name, section, num_classes, clip=clip, device=device)
        data = random_data(max(8, settings["schedule"]["batch_size"]), size, num_classes)
        rate = training_rate(network, settings, data, args.steps, device)
        seconds = [inference_seconds(network, variant, images, device) for variant in variants.values()]
        print(
            f"{name:14s} {rate:11.2f}  "
            + "  ".join(f"{s:{len(v) + 15}.3f}" for s, v in zip(seconds, variants, strict=True))
        )
    crf = next((v["crf"] for v in variants.values()), None)
    if crf is not None:
        seconds = crf_seconds(images, num_classes, crf)
        print(f"dense CRF post-processing: {seconds:.3f} s/img ({crf['iterations']} iterations)")
    print(
        f"({args.steps} updates after 1 warm-up, batch {base['schedule']['batch_size']}, "
        f"crop {base['schedule']['crop_size']}; inference median of {args.images} images after 1)"
    )


if __name__ == "__main__":
    main()
