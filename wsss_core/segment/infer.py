"""Inference of a trained segmentation network: class score maps of a whole image.

Each scale (and, with `flip`, its mirror image) is run through the network, in sliding windows when it is larger
than the window, and its logits are resized to the image; the softmax probabilities of all views are averaged.
Within one view, overlapping windows average their logits (as Segmenter, WeakTr's base, does).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from wsss_core.segment.train import normalise


@dataclass(frozen=True)
class InferenceSettings:
    """Views averaged at test time. window 0 runs each view whole; otherwise windows of window x window pixels
    every `stride` pixels (the last one aligned to the image edge)."""

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    window: int = 0
    stride: int = 0
    amp: bool = True

    def __post_init__(self) -> None:
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be positive, got {self.scales}")
        if self.window < 0 or (self.window and not 0 < self.stride <= self.window):
            raise ValueError(
                f"sliding window needs 0 < stride <= window, got window {self.window} stride {self.stride}"
            )


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows covering [0, length): every `stride`, plus one flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def sliding_logits(module: torch.nn.Module, images: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """Logits (B, K, H, W) of `images` (B, 3, H, W), run whole (window 0) or window by window and averaged."""
    height, width = images.shape[-2:]
    if window == 0 or (height <= window and width <= window):
        return module(images)
    total, count = None, torch.zeros((1, 1, height, width), device=images.device)
    for top in window_starts(height, window, stride):
        for left in window_starts(width, window, stride):
            crop = images[..., top : top + window, left : left + window]
            logits = module(crop).float()
            if total is None:
                total = torch.zeros((*logits.shape[:2], height, width), device=images.device)
            total[..., top : top + crop.shape[-2], left : left + crop.shape[-1]] += logits
            count[..., top : top + crop.shape[-2], left : left + crop.shape[-1]] += 1
    return total / count


@torch.no_grad()
def predict_probabilities(
    module: torch.nn.Module,
    image: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    settings: InferenceSettings,
    device: str | torch.device,
) -> np.ndarray:
    """Class probabilities (K, H, W) float32 of an RGB uint8 image (H, W, 3), averaged over scales and flips."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    device = torch.device(device)
    module.eval()
    height, width = image.shape[:2]
    tensor = normalise(image, mean, std).unsqueeze(0).to(device)
    amp = (
        torch.autocast(device_type="cuda", dtype=torch.float16)
        if settings.amp and device.type == "cuda"
        else nullcontext()
    )
    total = None
    for scale in settings.scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = (
            tensor
            if size == (height, width)
            else F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
        )
        for flipped in (False, True) if settings.flip else (False,):
            view = scaled.flip(-1) if flipped else scaled
            with amp:
                logits = sliding_logits(module, view, settings.window, settings.stride).float()
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            probabilities = logits.softmax(dim=1)[0]
            total = probabilities if total is None else total + probabilities
    views = len(settings.scales) * (2 if settings.flip else 1)
    return (total / views).cpu().numpy().astype(np.float32)
