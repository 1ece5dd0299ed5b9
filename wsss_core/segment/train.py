"""Training a segmentation network on seed labels: schedule, augmentation, optimiser, checkpoints and resume.

Everything random is keyed by (seed, step): which images form batch `step`, how each is scaled, flipped and cropped,
and the dropout draws of that step. A run killed after its last checkpoint therefore resumes with exactly the batches
and random draws the uninterrupted run would have used, and ends with identical weights (on CPU; CUDA kernels are not
all bit-deterministic). Checkpoints hold the model, optimiser, AMP scaler and the loss curve so far.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from wsss_core.progress import progress
from wsss_core.segment.losses import IGNORE_INDEX, segmentation_loss
from wsss_core.store.atomic import atomic_file

CHECKPOINT_NAME = "last.pt"


@dataclass(frozen=True)
class TrainSettings:
    """The schedule and augmentation of a run (params `retrain.runs.<run>`), and the loss."""

    iterations: int
    batch_size: int
    crop_size: int
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    warmup_iterations: int = 50
    warmup_ratio: float = 1e-6
    poly_power: float = 1.0
    amp: bool = True
    checkpoint_every: int = 100
    seed: int = 0
    loss: str = "ce"
    clip_tau: float = 1.2
    clip_patch: int = 120


@dataclass(frozen=True)
class OptimizerSettings:
    """Optimiser (params `retrain.runs.<run>.<network>`): base learning rate, and its multipliers for backbone and
    head."""

    kind: str = "adamw"
    lr: float = 2e-4
    backbone_lr_scale: float = 1.0
    head_lr_scale: float = 1.0
    weight_decay: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False


class TrainingData(Protocol):
    """Training pairs: `len(data)` images; `data[i]` is (RGB uint8 (H, W, 3), labels uint8 (H, W), 255 ignored)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


# ------------------------------------------------------------------------------------------------------ schedule


def lr_factor(step: int, iterations: int, warmup_iterations: int, warmup_ratio: float, power: float) -> float:
    """Multiplier of the base learning rate for update `step` (0-based).

    Linear warm-up from `warmup_ratio` to 1 over the first `warmup_iterations` updates, then poly decay
    (1 - step / iterations) ** power, as WeCLIP's PolyWarmupAdamW (and, without warm-up, DeepLab and WeakTr).
    """
    if not 0 <= step < iterations:
        raise ValueError(f"step {step} outside 0..{iterations - 1}")
    if step < warmup_iterations:
        return 1.0 - (1.0 - step / warmup_iterations) * (1.0 - warmup_ratio)
    return (1.0 - step / iterations) ** power


def make_optimizer(module: torch.nn.Module, settings: OptimizerSettings) -> torch.optim.Optimizer:
    """AdamW or SGD over the module's trainable backbone and head parameters, each group with its lr multiplier
    (`lr_scale`, applied with the schedule). A group with multiplier 0 is frozen instead of being updated at lr 0."""
    groups = []
    for name, parameters in module.parameter_groups().items():
        scale = settings.backbone_lr_scale if name == "backbone" else settings.head_lr_scale
        trainable = [p for p in parameters if p.requires_grad]
        if scale == 0:
            for parameter in trainable:
                parameter.requires_grad_(False)
        elif trainable:
            groups.append({"params": trainable, "lr": settings.lr * scale, "lr_scale": scale, "name": name})
    if not groups:
        raise ValueError("nothing to train: every parameter group is frozen or empty")
    if settings.kind == "adamw":
        return torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.999), weight_decay=settings.weight_decay)
    if settings.kind == "sgd":
        return torch.optim.SGD(
            groups,
            lr=settings.lr,
            momentum=settings.momentum,
            nesterov=settings.nesterov and settings.momentum > 0,
            weight_decay=settings.weight_decay,
        )
    raise ValueError(f"unknown optimizer {settings.kind!r}; expected adamw or sgd")


# -------------------------------------------------------------------------------------------------- augmentation


def batch_indices(step: int, batch_size: int, n_images: int, seed: int) -> list[int]:
    """The images of batch `step`: consecutive slots of per-epoch permutations, each drawn from (seed, epoch)."""
    indices = []
    for slot in range(step * batch_size, (step + 1) * batch_size):
        epoch, position = divmod(slot, n_images)
        indices.append(int(np.random.default_rng([seed, epoch]).permutation(n_images)[position]))
    return indices


def normalise(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> float32 (3, H, W), scaled to [0, 1] and normalised per channel."""
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (tensor - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def random_crop(
    image: np.ndarray,
    labels: np.ndarray,
    crop_size: int,
    scale_range: tuple[float, float],
    flip: bool,
    rng: np.random.Generator,
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented training pair: random rescale (image bilinear, labels nearest), optional horizontal flip, padding
    to at least the crop (image with the mean colour, i.e. 0 after normalisation; labels with 255), random crop.
    Returns the normalised image (3, crop, crop) and labels (crop, crop) int64."""
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    scale = float(rng.uniform(*scale_range))
    height, width = labels.shape
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    labels = np.asarray(Image.fromarray(labels).resize(size, Image.Resampling.NEAREST))
    if flip and rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    tensor, target = normalise(image, mean, std), torch.from_numpy(labels.astype(np.int64))
    pad_bottom, pad_right = max(0, crop_size - target.shape[0]), max(0, crop_size - target.shape[1])
    tensor = F.pad(tensor, (0, pad_right, 0, pad_bottom))
    target = F.pad(target, (0, pad_right, 0, pad_bottom), value=IGNORE_INDEX)
    top = int(rng.integers(0, target.shape[0] - crop_size + 1))
    left = int(rng.integers(0, target.shape[1] - crop_size + 1))
    rows, cols = slice(top, top + crop_size), slice(left, left + crop_size)
    return tensor[:, rows, cols], target[rows, cols]


def make_batch(
    data: TrainingData, step: int, settings: TrainSettings, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch `step` (B, 3, crop, crop) and its labels (B, crop, crop), a function of (seed, step) only."""
    images, targets = [], []
    for slot, index in enumerate(batch_indices(step, settings.batch_size, len(data), settings.seed)):
        image, labels = data[index]
        rng = np.random.default_rng([settings.seed, step, slot])
        tensor, target = random_crop(
            image, labels, settings.crop_size, settings.scale_range, settings.flip, rng, mean, std
        )
        images.append(tensor)
        targets.append(target)
    return torch.stack(images), torch.stack(targets)


# ----------------------------------------------------------------------------------------------------- training


def step_seed(seed: int, step: int) -> int:
    """The torch seed of one training step (dropout draws), the same after a resume."""
    return (seed * 1_000_003 + step) % (2**63)


def train(
    module: torch.nn.Module,
    data: TrainingData,
    settings: TrainSettings,
    optimizer_settings: OptimizerSettings,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: str | torch.device,
    work_dir: str | Path,
    on_step: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Train `module` in place for `settings.iterations` updates; return the curve [{step, loss, lr}].

    `work_dir` holds the checkpoint (`last.pt`, every `checkpoint_every` updates and at the end); a checkpoint found
    there is resumed from. It must be specific to this run's inputs: the caller keys it by their hash. `on_step(step)`
    is called after each update (tests use it to stand for a kill).
    """
    if len(data) == 0:
        raise ValueError("no training images")
    device = torch.device(device)
    module.to(device)
    optimizer = make_optimizer(module, optimizer_settings)
    use_amp = settings.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    checkpoint_path = Path(work_dir) / CHECKPOINT_NAME
    start, curve = 0, []
    if checkpoint_path.is_file():
        start, curve = resume_from(checkpoint_path, device, module, optimizer, scaler)
    module.train()
    for step in progress(range(start, settings.iterations), "retrain", total=settings.iterations - start, unit="it"):
        factor = lr_factor(
            step, settings.iterations, settings.warmup_iterations, settings.warmup_ratio, settings.poly_power
        )
        for group in optimizer.param_groups:
            group["lr"] = optimizer_settings.lr * group["lr_scale"] * factor
        images, labels = make_batch(data, step, settings, mean, std)
        torch.manual_seed(step_seed(settings.seed, step))  # dropout draws of this step, the same after a resume
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            logits = module(images.to(device))
        loss = segmentation_loss(settings.loss, logits, labels.to(device), settings.clip_tau, settings.clip_patch)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"retrain: loss is {loss_value} at step {step + 1}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        curve.append({"step": step + 1, "loss": loss_value, "lr": optimizer_settings.lr * factor})
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.iterations:
            save_checkpoint(checkpoint_path, step + 1, module, optimizer, scaler, curve)
        if on_step is not None:
            on_step(step + 1)
    module.eval()
    return curve


def resume_from(path: Path, device: torch.device, module, optimizer, scaler) -> tuple[int, list[dict[str, Any]]]:
    """Load a `save_checkpoint` state into the module, optimizer and loss scaler; return (step, curve so far)."""
    from wsss_core.models.checkpoints import CheckpointError

    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # a torn or foreign file: say which, the user can delete it
        raise CheckpointError(f"{path}: unreadable training checkpoint ({error}); delete it to start over") from error
    module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    return int(state["step"]), [dict(row) for row in state["curve"]]


def save_checkpoint(path: Path, step: int, module, optimizer, scaler, curve: list[dict[str, Any]]) -> None:
    """The resumable state of a training loop (model, optimizer, loss scaler, curve so far), written atomically."""
    state = {
        "step": step,
        "model": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "curve": curve,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as handle:
        torch.save(state, handle)
