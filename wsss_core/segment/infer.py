"""Inference of a trained segmentation network: class score maps of a whole image.

Each scale (and, with `flip`, its mirror image) is run through the network, in sliding windows when it is larger
than the window, and its logits are resized to the image. A view is the image times the scale (`keep_aspect`), or a
square of `input_size` times the scale whatever the image's aspect (`square`, as ExCEL's inference). The views of a
scale are averaged, then the scales: their softmax probabilities (`merge: softmax`), or their logits with one softmax
at the end (`merge: logits`, ExCEL). `unflipped_scales` leave out the mirror image at those scales (ExCEL's VOC
script keeps only the unflipped view at scale 1.0). Within one view, overlapping windows average their logits (as
Segmenter, WeakTr's base, does).
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
    unflipped_scales: tuple[float, ...] = ()
    resize: str = "keep_aspect"
    input_size: int = 320
    merge: str = "softmax"

    def __post_init__(self) -> None:
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be positive, got {self.scales}")
        if self.window < 0 or (self.window and not 0 < self.stride <= self.window):
            raise ValueError(
                f"sliding window needs 0 < stride <= window, got window {self.window} stride {self.stride}"
            )
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.merge not in MERGE_MODES:
            raise ValueError(f"merge must be one of {', '.join(MERGE_MODES)}, got {self.merge!r}")
        if self.input_size < 1:
            raise ValueError(f"input_size must be positive, got {self.input_size}")

    def view_size(self, height: int, width: int, scale: float) -> tuple[int, int]:
        """The network input's (height, width) at `scale`; ExCEL truncates input_size * scale (int())."""
        if self.resize == "square":
            side = max(1, int(self.input_size * scale))
            return side, side
        return max(1, round(height * scale)), max(1, round(width * scale))

    def flips(self, scale: float) -> tuple[bool, ...]:
        """The views of `scale`: the image, and its mirror image with `flip` unless the scale is unflipped."""
        return (False, True) if self.flip and scale not in self.unflipped_scales else (False,)


RESIZE_MODES = ("keep_aspect", "square")
MERGE_MODES = ("softmax", "logits")


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
    """Class probabilities (K, H, W) float32 of an RGB uint8 image (H, W, 3) from its views (scales, flips, resizing
    and merging as `settings` say: the module's docstring)."""
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
    counts = [len(settings.flips(scale)) for scale in settings.scales]
    # Every scale with as many views: one plain mean over all of them. Otherwise each scale's mean, then theirs.
    even = len(set(counts)) == 1
    total = None
    for scale, count in zip(settings.scales, counts, strict=True):
        size = settings.view_size(height, width, scale)
        scaled = (
            tensor
            if size == (height, width)
            else F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
        )
        for flipped in settings.flips(scale):
            view = scaled.flip(-1) if flipped else scaled
            with amp:
                logits = sliding_logits(module, view, settings.window, settings.stride).float()
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            scores = logits.softmax(dim=1)[0] if settings.merge == "softmax" else logits[0]
            if not even:
                scores = scores / count
            total = scores if total is None else total + scores
    mean = total / (sum(counts) if even else len(counts))
    if settings.merge == "logits":
        mean = mean.softmax(dim=0)
    return mean.cpu().numpy().astype(np.float32)
