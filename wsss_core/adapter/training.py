"""ExCEL's single-stage training loop (scripts/train_voc.py): each iteration makes pseudo labels from the model's
own CAMs (pseudo_labels.py) and trains the WeCLIP head on them, and its front (LVC's adapter) with the diversity loss.

    loss = seg_weight * seg + diversity_weight * diversity            (1.0 and 0.1)

seg is ExCEL's get_seg_loss on the head's logits upsampled (bilinear) to the crop: the mean of the background CE
(summed over background pixels, divided by their count + 1e-6) and the foreground CE (likewise). The diversity loss
(diversity.py) compares the head's affinity prediction with pair labels from the pseudo labels, or from the head's
own argmax from `seg_affinity_from` on.

Optimiser (engine/optimizer_engine.py, utils/optimizer.PolyWarmupAdamW): AdamW, betas (0.9, 0.999), eps 1e-8,
weight decay 0.01; every trained parameter (adapter and decoder) sits in the reference's x10 group, so the rate is
lr * 10 = 1e-3 for all of them (its base-rate groups hold the frozen CLIP: nothing). Schedule: linear warm-up from
1e-6 of the rate over 50 iterations, then poly decay (1 - t / T) ** 1 (wsss_core/segment/train.lr_factor).

Data (datasets/voc.VOC12ClsDataset, datasets/transforms.py): random rescale by U(0.5, 2.0) (PIL bilinear to
int(scale * size)), horizontal flip with probability 1/2, padding with black pixels to at least the crop at a random
offset, a random 320 x 320 crop, ImageNet normalisation; batches of 4. Deviation: the reference draws up to 10 crop
boxes until no class covers 75 % of the crop's *ground-truth mask* pixels; ground truth is not available to a weakly
supervised method, so one box is drawn.

Determinism and resume (as wsss_core/segment/train.py): batch `step` is a function of (seed, step) only (which
images, their augmentation), and the torch generator is reseeded from (seed, step) before the forward (dropout), so
a run killed after a checkpoint resumes with the draws the uninterrupted run makes and ends with the same weights,
bit for bit on CPU. Checkpoints (head, optimiser, AMP scaler, curve) go to `work_dir/last.pt` every
`checkpoint_every` iterations. AMP (fp16 autocast, loss scaling) runs on CUDA only; the reference itself keeps CLIP
in fp16 weights and the head in fp32 without autocast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from wsss_core.adapter.diversity import affinity_targets, diversity_loss
from wsss_core.adapter.model import ExcelAdapterModel
from wsss_core.adapter.pseudo_labels import PseudoLabelSettings, Schedule, pseudo_labels
from wsss_core.models import IMAGENET_MEAN, IMAGENET_STD  # ExCEL normalises with ImageNet's statistics, not CLIP's
from wsss_core.progress import progress
from wsss_core.segment.losses import pixel_cross_entropy
from wsss_core.segment.train import batch_indices, lr_factor, normalise, resume_from, save_checkpoint, step_seed

CHECKPOINT_NAME = "last.pt"
SEG_EPSILON = 1e-6  # get_seg_loss's guard in each term's denominator


class AdaptData(Protocol):
    """Training images: `len(data)`; `data[i]` is (RGB uint8 (H, W, 3), present foreground class ids 1..C)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, Sequence[int]]: ...


@dataclass(frozen=True)
class AdaptSettings:
    """One run's optimisation (defaults: the reference's VOC values)."""

    iterations: int = 30000
    batch_size: int = 4
    crop_size: int = 320
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    lr: float = 1e-4
    adapter_lr_scale: float = 10.0
    decoder_lr_scale: float = 10.0
    weight_decay: float = 0.01
    warmup_iterations: int = 50
    warmup_ratio: float = 1e-6
    poly_power: float = 1.0
    seg_weight: float = 1.0
    diversity_weight: float = 0.1
    radius: int = 8
    schedule: Schedule = Schedule()
    labels: PseudoLabelSettings = field(default_factory=PseudoLabelSettings)
    amp: bool = True
    extra_lr_scales: tuple[tuple[str, float], ...] = ()  # a method's further parameter groups (VDA's "inn")
    checkpoint_every: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.iterations, self.batch_size, self.crop_size, self.checkpoint_every) < 1:
            raise ValueError("iterations, batch_size, crop_size and checkpoint_every must be at least 1")
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {list(self.scale_range)}")


# ------------------------------------------------------------------------------------------------------------ data


def excel_crop(
    image: np.ndarray, crop_size: int, scale_range: tuple[float, float], flip: bool, rng: np.random.Generator
) -> torch.Tensor:
    """One augmented crop (3, crop, crop), ImageNet-normalised; see the module docstring."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    scale = float(rng.uniform(*scale_range))
    height, width = image.shape[:2]
    size = (max(1, int(scale * width)), max(1, int(scale * height)))  # truncated, as _img_rescaling
    image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    if flip and rng.random() > 0.5:
        image = image[:, ::-1]
    height, width = image.shape[:2]
    canvas_height, canvas_width = max(crop_size, height), max(crop_size, width)
    canvas = np.zeros((canvas_height, canvas_width, 3), dtype=np.uint8)  # black padding (mean_rgb [0, 0, 0])
    top = int(rng.integers(0, canvas_height - height + 1))
    left = int(rng.integers(0, canvas_width - width + 1))
    canvas[top : top + height, left : left + width] = image
    row = int(rng.integers(0, canvas_height - crop_size + 1))
    col = int(rng.integers(0, canvas_width - crop_size + 1))
    return normalise(canvas[row : row + crop_size, col : col + crop_size], IMAGENET_MEAN, IMAGENET_STD)


def make_batch(data: AdaptData, step: int, settings: AdaptSettings) -> tuple[torch.Tensor, list[list[int]]]:
    """Batch `step`: crops (B, 3, crop, crop) and each image's present classes, a function of (seed, step) only."""
    crops, present = [], []
    for slot, index in enumerate(batch_indices(step, settings.batch_size, len(data), settings.seed)):
        image, class_ids = data[index]
        rng = np.random.default_rng([settings.seed, step, slot])
        crops.append(excel_crop(image, settings.crop_size, settings.scale_range, settings.flip, rng))
        present.append(sorted({int(c) for c in class_ids}))
    return torch.stack(crops), present


# ---------------------------------------------------------------------------------------------------------- losses


def excel_seg_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """get_seg_loss: 0.5 * (background CE sum / (#background + 1e-6) + foreground CE sum / (#foreground + 1e-6)),
    label 255 ignored. A batch without background (or foreground) pixels gets half the other term, as in the
    reference."""
    losses, valid = pixel_cross_entropy(logits, labels)
    background, foreground = valid & (labels == 0), valid & (labels != 0)
    terms = [(losses * mask).sum() / (mask.sum() + SEG_EPSILON) for mask in (background, foreground)]
    return 0.5 * (terms[0] + terms[1])


# -------------------------------------------------------------------------------------------------------- training


def make_optimizer(model: torch.nn.Module, settings: AdaptSettings) -> torch.optim.AdamW:
    """AdamW over the model's parameter groups (adapter, decoder and any of `extra_lr_scales`), each remembering its
    lr multiplier (`lr_scale`)."""
    scales = {
        "adapter": settings.adapter_lr_scale,
        "decoder": settings.decoder_lr_scale,
        **dict(settings.extra_lr_scales),
    }
    groups = [
        {"params": parameters, "lr": settings.lr * scales[name], "lr_scale": scales[name], "name": name}
        for name, parameters in model.parameter_groups().items()
    ]
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=settings.weight_decay)


def excel_step(
    model: ExcelAdapterModel,
    images: torch.Tensor,
    present: list[list[int]],
    step: int,
    settings: AdaptSettings,
    *,
    cams_of: Callable[[Any, list[list[int]], torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, float], Any, torch.Tensor]:
    """One batch's forward, pseudo labels, seg and diversity losses: (loss with graph, its parts, the model's output,
    the labels). `cams_of(out, present, cams)` may replace the CAMs the labels come from (VDA's fused CAMs)."""
    schedule = settings.schedule
    dynamic = schedule.dynamic(step)
    use_amp = settings.amp and images.device.type == "cuda"
    with torch.autocast(device_type=images.device.type, dtype=torch.float16, enabled=use_amp):
        out = model(images, lvc=dynamic)
    cams = out.lvc_cams if dynamic else out.cams
    if cams_of is not None:
        cams = cams_of(out, present, cams)
    labels = pseudo_labels(
        images,
        cams.float(),
        out.attentions.float(),
        present,
        settings.labels,
        seg_affinity=out.affinity.detach() if dynamic else None,
    )
    logits = F.interpolate(out.logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
    seg = excel_seg_loss(logits, labels)
    pairs = logits.detach().argmax(dim=1) if schedule.seg_affinity(step) else labels
    diversity = diversity_loss(out.affinity, affinity_targets(pairs, tuple(out.logits.shape[-2:]), settings.radius))
    loss = settings.seg_weight * seg + settings.diversity_weight * diversity
    return loss, {"seg_loss": float(seg.detach()), "diversity_loss": float(diversity.detach())}, out, labels


def training_step(
    model: ExcelAdapterModel, images: torch.Tensor, present: list[list[int]], step: int, settings: AdaptSettings
) -> tuple[torch.Tensor, dict[str, float]]:
    """ExCEL's step: the loss of one batch (with graph) and its parts (`excel_step`)."""
    return excel_step(model, images, present, step, settings)[:2]


def train(
    model: torch.nn.Module,
    data: AdaptData,
    settings: AdaptSettings,
    *,
    device: str | torch.device,
    work_dir: str | Path,
    on_step: Callable[[int], None] | None = None,
    description: str = "adapt",
    step_loss: Callable[..., tuple[torch.Tensor, dict[str, float]]] | None = None,
) -> list[dict[str, Any]]:
    """Train `model`'s head in place for `settings.iterations`; return the curve, one row per iteration
    {iteration (0-based), loss, its parts, lr (the base rate times the schedule)}.

    `step_loss(model, images, present, step, settings)` gives a batch's loss and its named parts: ExCEL's
    `training_step` (seg_loss, diversity_loss) unless another method's (wsss_core/adapter/diclip.py, vda.py) is given.

    `work_dir` holds the checkpoint and must be specific to this run's inputs (the caller keys it by their hash); a
    checkpoint there is resumed from. `on_step(done)` runs after each iteration (tests use it to stand for a kill).
    """
    if len(data) == 0:
        raise ValueError("no training images")
    if settings.crop_size % model.patch_size:
        raise ValueError(f"crop_size {settings.crop_size} is not a multiple of the patch size {model.patch_size}")
    device = torch.device(device)
    model.to(device)
    optimizer = make_optimizer(model, settings)
    use_amp = settings.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    checkpoint_path = Path(work_dir) / CHECKPOINT_NAME
    start, curve = 0, []
    if checkpoint_path.is_file():
        start, curve = resume_from(checkpoint_path, device, model, optimizer, scaler)
    model.train()
    steps = range(start, settings.iterations)
    for step in progress(steps, description, total=len(steps), unit="it"):
        factor = lr_factor(
            step, settings.iterations, settings.warmup_iterations, settings.warmup_ratio, settings.poly_power
        )
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * group["lr_scale"] * factor
        images, present = make_batch(data, step, settings)
        torch.manual_seed(step_seed(settings.seed, step))  # dropout draws of this step, the same after a resume
        loss, parts = (step_loss or training_step)(model, images.to(device), present, step, settings)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"{description}: loss is {value} at iteration {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        curve.append({"iteration": step, "loss": value, **parts, "lr": settings.lr * factor})
        done = step + 1
        if done % settings.checkpoint_every == 0 or done == settings.iterations:
            save_checkpoint(checkpoint_path, done, model, optimizer, scaler, curve)
        if on_step is not None:
            on_step(done)
    model.eval()
    return curve
