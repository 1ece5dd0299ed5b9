"""ExCEL's training-free CAMs for one image and its present classes (ExCEL* in the paper: 74.6 mIoU on VOC train).

The steps follow ExCEL's training-free script (tools/training_free_attr.py) and the code it calls:
  1. pixels normalised with ImageNet's mean and std (datasets/transforms.normalize_img, not CLIP's), then resized
     bilinearly (align_corners=False, no antialiasing) to a square `input_size` x `input_size` (320: a 20 x 20
     token grid), whatever the image's aspect ratio;
  2. CLIP's visual tower with SVC in its last `svc_layers` blocks (svc.py); features divided by their norm over
     the tokens (surgery.normalize_over_tokens);
  3. texts: "a clean origami {}." for every class and background word, enriched by TSE (attributes.py);
  4. feature surgery against all texts, min-max over the tokens (surgery.py); keep the present classes' columns;
  5. CAA (`caa`, utils/affutils.refine_cams_with_aff): the original path's attention of the last 6 blocks, the
     box threshold 0.79, 3 Sinkhorn rounds, symmetrised, squared (wsss_core/cam/caa.py), not normalised after;
  6. min-max per class with epsilon 1e-7 (scale_cam_image), bilinear to the output size.
With `refine="par"` (utils/affutils.refine_cams_with_bkg_weclip): at image size, the background (1 - max_c CAM_c)^1
goes in front, PAR refines background and classes together against the network's input image, and the reference
takes the argmax. A CAM artifact stores classes only, so the generator stores F_c / (F_c + B) for refined class
score F_c and refined background B: each class's share against the background, in [0, 1]. Seeds with the power
background alpha = 1 (or the constant 0.5) then give exactly the reference's argmax: the pixel's best class has
share > 1/2 exactly when F_c > B, and the shares order the classes as F does.

Quirks reproduced: the token-wise normalisation and the CLS token inside the surgery's min-max (surgery.py); CAA's
attention mixes a head-averaged map (the last single-path block, from nn.MultiheadAttention) with head-*summed*
maps (the calibrated blocks return the sum over heads), so those blocks weigh `heads` times more in the layer mean;
PAR's weights sum to 1.01 (wsss_core/refine/par.py); PAR's image is the square network input, resized to the maps'
size, not the original image. Both ExCEL's training-free script and its validation pass that normalised tensor to
PAR (its affinity does not depend on the colour scale). `reference_quirks` adds the CAA box code's 8-bit threshold
and clipped box ends (the same scoremap2bbox as CLIP-ES).

Extra views (the script runs one): each scale s runs at ceil(int(s * input_size) / patch) * patch pixels, flips
are merged by max and scales summed on the scale-1 token grid, then min-max with epsilon 1e-5, as ExCEL's
utils/camutils.multi_scale_lam2; CAA then uses the scale-1 view's attention, so `scales` must include 1.0.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from wsss_core.cam.caa import caa_refine, check_affinity_source, feature_affinity, patch_affinity
from wsss_core.cam.excel.attributes import aggregate_attributes
from wsss_core.cam.excel.surgery import feature_surgery, normalize_over_tokens
from wsss_core.cam.excel.svc import svc_forward
from wsss_core.cam.methods.excel import SETTINGS as _DEFAULTS
from wsss_core.models.clip import ClipModel
from wsss_core.models.clip_text import encode_text
from wsss_core.models.clip_visual import VisualRunner
from wsss_core.params.spec import field_default
from wsss_core.refine.par import par_refine

# ExCEL's datasets/transforms.normalize_img, on 0..255 pixel values
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)
NORMALIZATIONS = ("imagenet", "clip")
REFINE_MODES = ("none", "par")
RESOLUTIONS = ("feature", "image")
MINMAX_EPSILON = 1e-7  # scale_cam_image, before resizing and the background
FUSION_EPSILON = 1e-5  # multi_scale_lam2, when views are merged


_default = functools.partial(field_default, _DEFAULTS)


@dataclass(frozen=True)
class ExcelSettings:
    """ExCEL's knobs. The defaults are the `excel` method's settings (wsss_core/cam/methods/excel.py, the reference
    defaults), read from there so they are written once. `store_resolution` says which grid the CAMs come out on:
    "feature" (the image's own token grid, ceil(H / patch) x ceil(W / patch)) or "image" (H x W, needed by PAR)."""

    input_size: int = _default("input_size")
    normalization: str = _default("normalization")
    scales: tuple[float, ...] = _default("scales")
    flip: bool = _default("flip")
    svc_layers: int = _default("svc_layers")
    attribute_top_fraction: float = _default("attribute_top_fraction")
    caa: bool = _default("caa")
    caa_layers: int = _default("caa_layers")
    sinkhorn_rounds: int = _default("sinkhorn_rounds")
    affinity_power: int = _default("affinity_power")
    affinity_source: str = _default("affinity_source")
    feature_power: float = _default("feature_power")
    box_threshold: float = _default("box_threshold")
    reference_quirks: bool = _default("reference_quirks")
    refine: str = _default("refine")
    par_dilations: tuple[int, ...] = _default("par_dilations")
    par_iterations: int = _default("par_iterations")
    store_resolution: str = "feature"

    def __post_init__(self) -> None:
        check_affinity_source(self.affinity_source)
        for name, value, allowed in (
            ("normalization", self.normalization, NORMALIZATIONS),
            ("refine", self.refine, REFINE_MODES),
            ("store_resolution", self.store_resolution, RESOLUTIONS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if 1.0 not in self.scales:
            raise ValueError(f"scales must include 1.0 (the view CAA's attention comes from), got {list(self.scales)}")
        if self.refine == "par" and self.store_resolution != "image":
            raise ValueError("refine 'par' refines at image size: it needs store_resolution 'image'")


@dataclass
class ExcelCamResult:
    """CAMs of one image: `cams` (P, h, w) in [0, 1] for `class_ids`, on the grid `store_resolution` names."""

    class_ids: list[int]
    cams: Tensor


def minmax_per_map(maps: Tensor, epsilon: float) -> Tensor:
    """(x - min) / (max(x - min) + epsilon) per map (P, h, w), ExCEL's normalisations."""
    shifted = maps - maps.amin(dim=(-2, -1), keepdim=True)
    return shifted / (shifted.amax(dim=(-2, -1), keepdim=True) + epsilon)


def _resize(maps: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]


def par_class_shares(pixels: torch.Tensor, cams: torch.Tensor, dilations, iterations: int) -> torch.Tensor:
    """`refine: par`: PAR on [(1 - max) background, classes] (C, H, W) at the pixels' size, stored as each class's
    share against the refined background (power-1 seeds then give the reference's argmax)."""
    background = 1.0 - cams.amax(dim=0, keepdim=True)
    refined = par_refine(pixels, torch.cat([background, cams])[None], dilations=dilations, iterations=iterations)
    return share_against_background(refined[0])


def share_against_background(refined: Tensor) -> Tensor:
    """(1 + P, H, W) refined [background, classes] -> (P, H, W) F_c / (F_c + B), 0 where both are 0."""
    background, classes = refined[:1], refined[1:]
    total = classes + background
    return torch.where(total > 0, classes / total.where(total > 0, 1.0), 0.0)


def network_input(image: np.ndarray, mean: Tensor, std: Tensor, size: int, device) -> Tensor:
    """uint8 (H, W, 3) -> (1, 3, size, size): normalised with `mean` and `std` (1, 3, 1, 1, on 0..255 values), then
    resized bilinearly (align_corners False, no antialiasing) whatever the aspect ratio, on `device`."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image must be a uint8 (H, W, 3) array, got {getattr(image, 'dtype', type(image))} "
            f"{getattr(image, 'shape', '')}"
        )
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    pixels = ((pixels - mean) / std).to(device)
    return F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)


def calibrated_attention_affinity(result, heads: int, *, rounds: int, power: int) -> Tensor:
    """CAA's transition matrix (hw, hw) from the original path's attention a dual-path pass captured (batch item 0):
    nn.MultiheadAttention averages its heads, while ExCEL's and DiCLIP's calibrated blocks return the sum over
    heads, so those blocks weigh `heads` times more in the layer mean (the reference's quirk)."""
    maps = [
        result.attentions[i][0].float().mean(dim=0) * (heads if i >= result.first_calibrated else 1)
        for i in sorted(result.attentions)
    ]
    matrix = torch.stack(maps).mean(dim=0)[1:, 1:]
    return patch_affinity(matrix, rounds=rounds, power=power)


class ExcelCams:
    """ExCEL training-free CAM generator for a dataset's classes.

    Arguments:
      clip: a loaded CLIP (`load_clip`) with a standard vision transformer.
      class_prompts: one prompt per foreground class, class 1 first ("a clean origami bird avian.").
      background_prompts: prompts of the background words (ExCEL: CLIP-ES's 25 VOC / 23 COCO); may be empty.
      attributes: (D, B) the attribute bank, D = CLIP's embedding width (bank.zarr's attr_features).
      settings: `ExcelSettings`.
    """

    def __init__(
        self,
        clip: ClipModel,
        class_prompts: Sequence[str],
        background_prompts: Sequence[str],
        attributes: Tensor | np.ndarray,
        settings: ExcelSettings = ExcelSettings(),
    ) -> None:
        self.clip = clip
        self.runner = VisualRunner(clip)
        self.settings = settings
        patch, blocks = clip.patch_size, self.runner.num_layers
        if settings.input_size < patch or settings.input_size % patch:
            raise ValueError(f"input_size {settings.input_size} must be a multiple of the patch size {patch}")
        for name in ("svc_layers", "caa_layers") if settings.caa else ("svc_layers",):
            if not 1 <= getattr(settings, name) <= blocks:
                raise ValueError(
                    f"{name} must be in 1..{blocks} (the blocks of this CLIP), got {getattr(settings, name)}"
                )
        self.num_classes = len(class_prompts)
        text = encode_text(clip, list(class_prompts) + list(background_prompts))  # (C + B, E), unit rows
        attributes = torch.as_tensor(np.asarray(attributes, dtype=np.float32)).to(clip.device)
        if attributes.ndim != 2 or attributes.shape[0] != text.shape[1]:
            raise ValueError(
                f"the attribute bank is {tuple(attributes.shape)}, expected (D, B) with D = {text.shape[1]}, the "
                "width of this CLIP's text embeddings"
            )
        self.text = aggregate_attributes(
            text, attributes, self.num_classes, top_fraction=settings.attribute_top_fraction
        )
        if settings.normalization == "imagenet":
            mean, std = IMAGENET_MEAN_255, IMAGENET_STD_255
        else:
            mean, std = tuple(255.0 * m for m in clip.mean), tuple(255.0 * s for s in clip.std)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    # --- steps

    def prepare(self, image: np.ndarray) -> Tensor:
        """uint8 (H, W, 3) -> (1, 3, S, S) normalised, then resized bilinearly to S = input_size, on clip.device."""
        return network_input(image, self._mean, self._std, self.settings.input_size, self.clip.device)

    def view_size(self, scale: float) -> int:
        """Input side of the view at `scale`: int(scale * input_size), rounded up to the patch size."""
        patch = self.clip.patch_size
        return max(patch, math.ceil(int(scale * self.settings.input_size) / patch) * patch)

    def _scores(self, pixels: Tensor, targets: list[int], capture: bool):
        """Surgery scores (views, P, h, w) of the present classes for a batch of views, and the pass."""
        layers = range(-self.settings.caa_layers, 0) if capture and self.settings.caa else ()
        result = svc_forward(self.runner, pixels, layers=self.settings.svc_layers, capture_layers=layers)
        scores = feature_surgery(normalize_over_tokens(result.features), self.text)[:, 1:, targets]
        height, width = result.grid
        return scores.transpose(1, 2).reshape(pixels.shape[0], len(targets), height, width), result

    def _affinity(self, result) -> Tensor:
        """CAA's transition matrix (hw, hw) from the base view's pass (batch item 0)."""
        settings = self.settings
        layers = sorted(result.attentions)
        if settings.affinity_source == "features":
            tokens = torch.stack([result.ln_1[i][0] for i in layers])
            return feature_affinity(
                tokens, rounds=settings.sinkhorn_rounds, power=settings.affinity_power, beta=settings.feature_power
            )
        return calibrated_attention_affinity(
            result, self.runner.num_heads, rounds=settings.sinkhorn_rounds, power=settings.affinity_power
        )

    @torch.no_grad()
    def __call__(self, image: np.ndarray, class_ids: Sequence[int]) -> ExcelCamResult:
        """CAMs of `image` (uint8 H x W x 3) for its present classes `class_ids` (1..C)."""
        class_ids = sorted({int(c) for c in class_ids})
        bad = [c for c in class_ids if not 1 <= c <= self.num_classes]
        if bad:
            raise ValueError(f"class ids {bad} are outside 1..{self.num_classes}")
        height, width = image.shape[:2]
        patch = self.clip.patch_size
        out_size = (
            (height, width) if self.settings.store_resolution == "image" else (-(-height // patch), -(-width // patch))
        )
        if not class_ids:
            return ExcelCamResult([], torch.zeros((0, *out_size)))
        settings, targets = self.settings, [c - 1 for c in class_ids]
        pixels = self.prepare(image)
        flips = (False, True) if settings.flip else (False,)
        scales = [1.0] + [s for s in settings.scales if s != 1.0]
        fused, base = None, None
        for scale in scales:
            view = pixels
            if scale != 1.0:
                side = self.view_size(scale)
                view = F.interpolate(pixels, size=(side, side), mode="bilinear", align_corners=False)
            batch = torch.cat([view, view.flip(-1)]) if settings.flip else view
            scores, result = self._scores(batch, targets, capture=scale == 1.0)
            if scale == 1.0:
                base = result
                grid = result.grid
            per_flip = [_resize(scores[i], grid) for i in range(len(flips))]
            merged = per_flip[0] if len(per_flip) == 1 else torch.maximum(per_flip[0], per_flip[1].flip(-1))
            fused = merged if fused is None else fused + merged
        if len(scales) * len(flips) > 1:
            fused = minmax_per_map(fused, FUSION_EPSILON)
        cams = fused
        if settings.caa:
            cams = caa_refine(
                cams,
                self._affinity(base),
                box_threshold=settings.box_threshold,
                normalize=False,
                reference_quirks=settings.reference_quirks,
            )
        cams = _resize(minmax_per_map(cams, MINMAX_EPSILON), out_size)
        if settings.refine == "par":
            cams = par_class_shares(pixels, cams, settings.par_dilations, settings.par_iterations)
        return ExcelCamResult(class_ids, cams.float().cpu())
