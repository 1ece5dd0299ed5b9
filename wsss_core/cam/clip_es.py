"""CLIP-ES CAMs (training-free): Softmax-GradCAM on a frozen CLIP, refined by class-aware attention affinity.

For one image and its present classes (from the image-level labels):
  1. resize to multiples of the patch size (bicubic), run CLIP's visual tower; layers before the last run
     without grad, and the last block's ln_1 output is the Grad-CAM activation;
  2. image embedding = mean of the projected patch tokens; logits = 100 * cos(image, text) over all
     foreground prompts and background words; softmax over [present foreground + all background];
  3. Softmax-GradCAM for every present class in one batched backward pass; ReLU, min-max;
  4. CAA: attention of the last layers -> Sinkhorn -> symmetrise -> power, masked by boxes around each CAM
     (`affinity_source="features"`: the same layers' token similarity in place of their attention, caa.py).
Scales and flips (the reference runs one scale, no flip) are each computed this way and averaged on the
scale-1 token grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from wsss_core.cam.caa import caa_refine, check_affinity_source, trace_affinity
from wsss_core.cam.gradcam import check_gradcam_normalization, minmax, softmax_gradcam, softmax_gradcam_loop
from wsss_core.cam.methods.clip_es import SETTINGS as _DEFAULTS
from wsss_core.cam.resize import upsample_cams  # noqa: F401 - part of this module's API
from wsss_core.models.clip import ClipModel
from wsss_core.models.clip_text import encode_text
from wsss_core.models.clip_visual import VisualRunner, prepare_image


@dataclass(frozen=True)
class ClipEsSettings:
    """CLIP-ES knobs. The defaults are the `clip_es` method's settings (wsss_core/cam/methods/clip_es.py, the reference
    defaults), read from there so they are written once; the last two fields exist for comparisons only."""

    scales: tuple[float, ...] = tuple(_DEFAULTS["scales"].default)
    flip: bool = _DEFAULTS["flip"].default
    caa_layers: int = _DEFAULTS["caa_layers"].default
    sinkhorn_rounds: int = _DEFAULTS["sinkhorn_rounds"].default
    affinity_power: int = _DEFAULTS["affinity_power"].default
    affinity_source: str = _DEFAULTS["affinity_source"].default  # attention (CLIP-ES) | features (caa.py)
    feature_power: float = _DEFAULTS["feature_power"].default  # beta of the "features" source
    box_threshold: float = _DEFAULTS["box_threshold"].default  # 0.4 VOC, 0.7 COCO
    # CAA boxes as CLIP-ES's scoremap2bbox: 8-bit threshold, clipped box ends
    reference_quirks: bool = _DEFAULTS["reference_quirks"].default
    # Grad-CAM min-max: "once" | "clip_es" (twice, each with the 1e-7 epsilon, as CLIP-ES's pytorch_grad_cam does;
    # gradcam.clip_es_minmax). The CAA then refines the map normalised this way, as in the reference.
    gradcam_normalization: str = _DEFAULTS["gradcam_normalization"].default
    # Round the (interpolated) positional embedding through float16, as CLIP-ES's upsample_pos_emb does
    # (VisualRunner.positional_embedding); changes only grids other than the model's native one for fp16 weights.
    fp16_positional_embedding: bool = _DEFAULTS["fp16_positional_embedding"].default
    # fp16 autocast on CUDA, as the reference ran CLIP in half precision; ignored on CPU
    amp: bool = _DEFAULTS["amp"].default
    logit_scale: float = 100.0
    batched_gradients: bool = True  # False: one backward pass per class, as the reference (for comparison)

    def __post_init__(self) -> None:
        check_affinity_source(self.affinity_source)
        check_gradcam_normalization(self.gradcam_normalization)


@dataclass
class ClipEsCams:
    """CAMs of one image on its scale-1 token grid: `raw` Grad-CAM and `refined` by CAA, both (P, h, w) in [0, 1]."""

    class_ids: list[int]
    raw: torch.Tensor
    refined: torch.Tensor


class ClipEs:
    """CLIP-ES CAM generator for a dataset's classes.

    Arguments:
      clip: a loaded CLIP (`load_clip`).
      class_prompts: one prompt per foreground class, class 1 first (e.g. "a clean origami bird avian.").
      background_prompts: prompts of the background words (25 for VOC, 23 for COCO); may be empty.
      settings: `ClipEsSettings`.
    """

    def __init__(
        self,
        clip: ClipModel,
        class_prompts: Sequence[str],
        background_prompts: Sequence[str],
        settings: ClipEsSettings = ClipEsSettings(),
    ) -> None:
        self.clip = clip
        self.runner = VisualRunner(clip, fp16_positional_embedding=settings.fp16_positional_embedding)
        self.settings = settings
        self.num_classes = len(class_prompts)
        self.text = encode_text(clip, list(class_prompts) + list(background_prompts))  # (C + B, E)
        if not 1 <= settings.caa_layers <= self.runner.num_layers:
            raise ValueError(f"caa_layers must be in 1..{self.runner.num_layers}, got {settings.caa_layers}")

    def _autocast_dtype(self) -> torch.dtype | None:
        return torch.float16 if self.settings.amp and self.clip.device.type == "cuda" else None

    def _one_view(self, image: np.ndarray, targets: list[int], scale: float, flip: bool):
        pixels = prepare_image(self.clip, image, scale=scale, flip=flip)
        layers = range(-self.settings.caa_layers, 0)
        trace = self.runner.forward(
            pixels, capture_layers=layers, grad_from_layer=-1, autocast_dtype=self._autocast_dtype()
        )
        activations = trace.blocks[self.runner.num_layers - 1].ln_1  # (1, N, D), in the graph
        with torch.autocast(self.clip.device.type, enabled=False):
            patches = self.runner.project(trace.tokens[-1].float())[:, 1:]
            image_embedding = F.normalize(patches.mean(dim=1), dim=-1)
            logits = self.settings.logit_scale * image_embedding @ self.text.T  # (1, C + B)
            background = list(range(self.num_classes, self.text.shape[0]))
            gradcam = softmax_gradcam if self.settings.batched_gradients else softmax_gradcam_loop
            selected = targets + background
            normalization = self.settings.gradcam_normalization
            cams = gradcam(activations, logits, targets, trace.grid, softmax_over=selected, normalization=normalization)
            cams = cams[0]  # (P, h, w)
            affinity = trace_affinity([trace.blocks[i % self.runner.num_layers] for i in layers], self.settings)
            refined = caa_refine(
                cams,
                affinity,
                box_threshold=self.settings.box_threshold,
                reference_quirks=self.settings.reference_quirks,
            )
        if flip:
            cams, refined = cams.flip(-1), refined.flip(-1)
        return cams.detach(), refined.detach()

    def __call__(self, image: np.ndarray, class_ids: Sequence[int]) -> ClipEsCams:
        """CAMs of `image` (uint8 H x W x 3) for its present classes `class_ids` (1..C)."""
        class_ids = [int(c) for c in class_ids]
        bad = [c for c in class_ids if not 1 <= c <= self.num_classes]
        if bad:
            raise ValueError(f"class ids {bad} are outside 1..{self.num_classes}")
        patch = self.clip.patch_size
        grid = (-(-image.shape[0] // patch), -(-image.shape[1] // patch))
        if not class_ids:
            empty = torch.zeros((0, *grid))
            return ClipEsCams([], empty, empty)
        targets = [c - 1 for c in class_ids]
        raw_sum = torch.zeros((len(targets), *grid), device=self.clip.device)
        refined_sum = torch.zeros_like(raw_sum)
        views = [(s, f) for s in self.settings.scales for f in ((False, True) if self.settings.flip else (False,))]
        for scale, flip in views:
            cams, refined = self._one_view(image, targets, scale, flip)
            if cams.shape[-2:] != grid:
                cams = F.interpolate(cams[None], size=grid, mode="bilinear", align_corners=False)[0]
                refined = F.interpolate(refined[None], size=grid, mode="bilinear", align_corners=False)[0]
            raw_sum += cams
            refined_sum += refined
        if len(views) > 1:
            raw_sum, refined_sum = minmax(raw_sum, (-2, -1)), minmax(refined_sum, (-2, -1))
        return ClipEsCams(class_ids, raw_sum.cpu(), refined_sum.cpu())
