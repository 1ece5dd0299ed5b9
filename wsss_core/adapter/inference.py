"""CAMs of a trained ExCEL model at inference time (tools/infer_lam.py with `--training_free false`, the figure the
paper reports as 78.0 mIoU on VOC train), for the `excel_adapter` CAM method:

  1. the image, ImageNet-normalised, resized bilinearly to `input_size` x `input_size` (320), whatever its aspect;
  2. one forward of the image (and, with `flip`, its mirror image in the same batch; eval mode, no dropout):
     `lvc` takes LVC's dynamic CAMs (utils/camutils.cure_attr_map_flip: F_d of both views shift SVC, the shift's
     mean taken over the pair), otherwise SVC's static CAMs; with `flip` the views are merged by max and each class
     min-maxed with epsilon 1e-5;
  3. CAA on the unflipped view's attention of the last `caa_layers` blocks; `dynamic_caa` is the dynamic form with
     the head's affinity prediction of that view alone (`seg_attn`), box threshold 0.79;
  4. min-max per class with epsilon 1e-7, resized to the output grid; `refine: par` as the training-free method
     (wsss_core/cam/excel/cams.py): PAR on [background (1 - max)^1, classes] at image size against the square input,
     stored as each class's share F / (F + B), so power-1 seeds give the reference's argmax.
ExCEL's validation during training (engine/validatation_engine.py) differs in three settings: static CAMs (`lvc`
false), no flip, box threshold 0.75.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_core.adapter.diversity import affinity_prediction
from wsss_core.adapter.model import ExcelAdapterModel
from wsss_core.adapter.pseudo_labels import caa_transition
from wsss_core.cam.caa import caa_refine
from wsss_core.cam.excel.cams import FUSION_EPSILON, MINMAX_EPSILON, minmax_per_map, par_class_shares
from wsss_core.models import IMAGENET_MEAN, IMAGENET_STD  # ExCEL normalises with ImageNet's statistics, not CLIP's
from wsss_core.refine.par import DILATIONS, ITERATIONS


@dataclass(frozen=True)
class InferenceSettings:
    """The reference's inference (tools/infer_lam.py) as defaults."""

    input_size: int = 320
    flip: bool = True
    lvc: bool = True
    dynamic_caa: bool = True
    caa_layers: int = 6
    box_threshold: float = 0.79
    reference_quirks: bool = False
    refine: str = "none"
    par_dilations: tuple[int, ...] = DILATIONS
    par_iterations: int = ITERATIONS
    store_resolution: str = "feature"

    def __post_init__(self) -> None:
        if self.refine not in ("none", "par"):
            raise ValueError(f"refine must be none or par, got {self.refine!r}")
        if self.refine == "par" and self.store_resolution != "image":
            raise ValueError("refine 'par' refines at image size: it needs store_resolution 'image'")


class AdapterCams:
    """CAMs (P, h, w) in [0, 1] of an image's present classes from a trained `ExcelAdapterModel`."""

    def __init__(self, model: ExcelAdapterModel, settings: InferenceSettings = InferenceSettings()) -> None:
        patch, blocks = model.patch_size, model.runner.num_layers
        if settings.input_size < patch or settings.input_size % patch:
            raise ValueError(f"input_size {settings.input_size} must be a multiple of the patch size {patch}")
        if not 1 <= settings.caa_layers <= blocks:
            raise ValueError(f"caa_layers must be in 1..{blocks} (the blocks of this CLIP), got {settings.caa_layers}")
        self.model = model.eval()
        self.model.caa_layers = settings.caa_layers  # the attention the pass keeps; training's own value is moot here
        self.settings = settings
        self.device = model.texts.device
        self._mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1) * 255.0

    def prepare(self, image: np.ndarray) -> Tensor:
        """uint8 (H, W, 3) -> (1, 3, S, S): normalised, then resized bilinearly (align_corners False)."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        pixels = ((pixels - self._mean) / self._std).to(self.device)
        size = self.settings.input_size
        return F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def __call__(self, image: np.ndarray, class_ids: Sequence[int]) -> tuple[list[int], Tensor]:
        settings, model = self.settings, self.model
        class_ids = sorted({int(c) for c in class_ids})
        bad = [c for c in class_ids if not 1 <= c <= model.num_foreground]
        if bad:
            raise ValueError(f"class ids {bad} are outside 1..{model.num_foreground}")
        height, width = image.shape[:2]
        patch = model.patch_size
        out_size = (
            (height, width) if settings.store_resolution == "image" else (-(-height // patch), -(-width // patch))
        )
        if not class_ids:
            return [], torch.zeros((0, *out_size))
        pixels = self.prepare(image)
        views = torch.cat([pixels, pixels.flip(-1)]) if settings.flip else pixels
        out = model(views, lvc=settings.lvc)
        cams = (out.lvc_cams if settings.lvc else out.cams).float()
        if settings.flip:
            cams = minmax_per_map(torch.maximum(cams[0], cams[1].flip(-1)), FUSION_EPSILON)
        else:
            cams = cams[0]
        # seg_attn of the unflipped view alone, as the reference's separate one-image forward computes it
        seg_affinity = affinity_prediction(out.features[:1])[0] if settings.dynamic_caa else None
        transition = caa_transition(out.attentions[:, 0].float(), seg_affinity)
        refined = caa_refine(
            cams[[c - 1 for c in class_ids]],
            transition,
            box_threshold=settings.box_threshold,
            normalize=False,
            reference_quirks=settings.reference_quirks,
        )
        maps = minmax_per_map(refined, MINMAX_EPSILON)
        if tuple(maps.shape[-2:]) != out_size:
            maps = F.interpolate(maps[None], size=out_size, mode="bilinear", align_corners=False)[0]
        if settings.refine == "par":
            maps = par_class_shares(pixels, maps, settings.par_dilations, settings.par_iterations)
        return class_ids, maps.float().cpu()
