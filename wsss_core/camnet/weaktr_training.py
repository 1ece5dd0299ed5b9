"""WeakTr's phase-1 training loop (the reference's main.py and engine.train_one_epoch): the sum of three multi-label
soft-margin losses (class tokens, coarse CAM, fine CAM) on the image-level labels, AdamW, an epoch-wise cosine
schedule, AMP on CUDA, and exact resume after a kill.

Reference behaviour kept on purpose:
- The learning rate is set per epoch by timm's cosine scheduler, stepped with the index of the epoch just finished,
  so epoch e trains at the schedule's value for e - 1 (epochs 0 and 1 both at the warm-up start).
- Weight decay applies to every parameter (the reference hands AdamW `model.parameters()`, not timm's groups).
- An epoch is len(images) // batch_size updates over a fresh permutation (drop_last).
Every batch's augmentation and drop-path draws come from a seed of (run seed, update), so a resumed run gives the
same weights as an unbroken one. Checkpoints are written at epoch ends.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsss_core.camnet.weaktr import LOSS_COLUMNS
from wsss_core.progress import progress
from wsss_core.segment.train import resume_from, save_checkpoint, step_seed

CHECKPOINT_NAME = "last.pt"


class TrainingData:
    """The index's images (read when a batch needs them) and their image-level labels as multi-hot vectors."""

    def __init__(self, dataset) -> None:
        self.samples = list(dataset.samples)
        self.num_foreground = dataset.num_classes - 1

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, index: int):
        from PIL import Image

        with Image.open(self.samples[index].image_path) as image:
            return image.convert("RGB")

    def target(self, index: int) -> torch.Tensor:
        target = torch.zeros(self.num_foreground)
        for label in self.samples[index].labels:
            target[label - 1] = 1.0
        return target


def base_lr(run: dict[str, Any]) -> float:
    """The peak learning rate: lr scaled by batch_size / 512, as the reference does."""
    return run["lr"] * run["batch_size"] / 512.0


def epoch_lr(epoch: int, run: dict[str, Any]) -> float:
    """The learning rate of `epoch` (0-based): timm's CosineLRScheduler (warm-up from warmup_lr, cosine over all
    epochs to min_lr) evaluated one epoch late, as the reference steps it."""
    t, peak, warmup = max(epoch - 1, 0), base_lr(run), run["warmup_epochs"]
    if t < warmup:
        return run["warmup_lr"] + t * (peak - run["warmup_lr"]) / warmup
    return run["min_lr"] + 0.5 * (peak - run["min_lr"]) * (1 + math.cos(math.pi * t / run["epochs"]))


def _posterize(image, bits_to_keep, **_):
    """timm's posterize as the reference's Pillow ran it. RandAugment's increasing posterize reaches 0 bits at high
    magnitudes: Pillow 9 then kept no bit (a black image), current Pillow refuses 0."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return image
    if bits_to_keep <= 0:
        return image.point(lambda _: 0)
    return ImageOps.posterize(image, bits_to_keep)


def make_transform(run: dict[str, Any], mean: Sequence[float], std: Sequence[float]):
    """timm's ImageNet training transform with the reference's arguments (datasets.build_transform)."""
    from timm.data import create_transform
    from timm.data.auto_augment import RandAugment

    augment = run["augment"]
    transform = create_transform(
        input_size=augment["input_size"],
        is_training=True,
        scale=tuple(augment["crop_scale"]),
        color_jitter=augment["color_jitter"],
        auto_augment=augment["auto_augment"],
        interpolation=augment["interpolation"],
        re_prob=augment["random_erasing"],
        re_mode="pixel",
        re_count=1,
        mean=tuple(mean),
        std=tuple(std),
    )
    for step in transform.transforms:
        if isinstance(step, RandAugment):
            for op in step.ops:
                if op.name.startswith("Posterize"):
                    op.aug_fn = _posterize
    return transform


def make_batch(data: TrainingData, indices: Sequence[int], transform, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The augmented images and targets of one update, drawn from `seed` (python's, numpy's and torch's global
    generators: timm's RandAugment picks its operations with numpy, its magnitudes with python, and torchvision's
    flip and timm's random erasing draw from torch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    images = torch.stack([transform(data.image(index)) for index in indices])
    return images, torch.stack([data.target(index) for index in indices])


def losses(outputs: tuple[torch.Tensor, ...], targets: torch.Tensor) -> dict[str, torch.Tensor]:
    parts = {
        name: F.multilabel_soft_margin_loss(output.float(), targets)
        for name, output in zip(LOSS_COLUMNS[1:], outputs, strict=True)
    }
    return {"loss": sum(parts.values()), **parts}


def train(
    network: torch.nn.Module,
    data: TrainingData,
    run: dict[str, Any],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: str | torch.device,
    work_dir: str | Path,
    checkpoint_every: int = 1,
    on_step: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Train `network` in place; return the curve, one row per update {iteration, epoch, loss, token_loss,
    coarse_loss, fine_loss, lr}. `work_dir` (keyed by the caller on the run's inputs) holds the checkpoint, resumed
    from when present; `on_step(update)` runs after each update (tests use it to stand for a kill)."""
    per_epoch = len(data) // run["batch_size"]
    if per_epoch == 0:
        raise ValueError(
            f"batch_size {run['batch_size']} is larger than the {len(data)} training images (an epoch drops the "
            "incomplete batch)"
        )
    device = torch.device(device)
    network.to(device)
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=base_lr(run), weight_decay=run["weight_decay"], eps=1e-8, betas=(0.9, 0.999)
    )
    use_amp = run["amp"] and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    checkpoint_path = Path(work_dir) / CHECKPOINT_NAME
    start, curve = 0, []
    if checkpoint_path.is_file():
        start, curve = resume_from(checkpoint_path, device, network, optimizer, scaler)
    transform = make_transform(run, mean, std)
    network.train()
    total = run["epochs"] * per_epoch
    bar = progress(range(start * per_epoch, total), "cam_net", total=total - start * per_epoch, unit="it")
    updates = iter(bar)
    for epoch in range(start, run["epochs"]):
        lr = epoch_lr(epoch, run)
        for group in optimizer.param_groups:
            group["lr"] = lr
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(step_seed(run["seed"], epoch)))
        for batch in range(per_epoch):
            step = next(updates)
            indices = order[batch * run["batch_size"] : (batch + 1) * run["batch_size"]].tolist()
            images, targets = make_batch(data, indices, transform, step_seed(run["seed"], step))
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                parts = losses(network(images.to(device)), targets.to(device))
            value = parts["loss"].item()
            if not math.isfinite(value):
                raise FloatingPointError(f"cam_net: loss is {value} at update {step + 1}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(parts["loss"]).backward()
            scaler.step(optimizer)
            scaler.update()
            curve.append({"iteration": step, "epoch": epoch, **{k: v.item() for k, v in parts.items()}, "lr": lr})
            if on_step is not None:
                on_step(step + 1)
        if (epoch + 1) % checkpoint_every == 0 or epoch + 1 == run["epochs"]:
            save_checkpoint(checkpoint_path, epoch + 1, network, optimizer, scaler, curve)
    network.eval()
    return curve
