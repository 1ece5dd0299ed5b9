"""DiCLIP's training-free CAMs for one image and its present classes (the reference's tools/infer_lam.py with
`--training_free true`, and the mask pass of its cache building, maintain_kv_cache/).

  1. pixels normalised with ImageNet's mean and std and resized to a square `input_size` (320: a 20 x 20 token
     grid), as ExCEL does (wsss_core/cam/excel/cams.py);
  2. VCE (wsss_core/models/diffusion.py): that input, de-normalised to uint8 as the reference does, through SD's
     VAE (posterior mean), noised at the scheduler's step `timestep_index`, one UNet pass with the empty prompt;
     the raw q k^T of `vce_block` resized to CLIP's grid, and the softmax attention of `refine_block`;
  3. ACR (acr.py) turns the first into the affinity R, fused into CLIP's last `fused_layers` blocks (fusion.py);
  4. features divided by their norm over the tokens; feature surgery against the class and background texts
     gives the patch-text CAM;
  5. TSA's static retrieval from the SD key-value cache (retrieval.py), fused with weight `retrieval_weight`
     (0.5; 0: the patch-text CAM alone, as when the cache's own masks are made), or, for a trained model, its
     dynamic adapter's ReLU'd maps with weight 0.1;
  6. CAA on the original path's attention of the last `caa_layers` blocks (ExCEL's refine_cams_with_aff: box
     threshold 0.88 at inference, 0.79 for the cache masks);
  7. the recursive refinement by `refine_block`'s attention (recursive.py, `refine_iterations` rounds; 0: none),
     through the reference's 512 x 512 min-maxed intermediate to the output size, min-maxed there as the
     reference's label function does (cam_to_label_iseg); without it, min-max per class.

The SD noise is drawn from `noise_seed` (the reference draws it from the global RNG, so its maps are not
reproducible per image); everything else is the reference's arithmetic.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from wsss_core.cam.caa import caa_refine
from wsss_core.cam.diclip.acr import acr_affinity
from wsss_core.cam.diclip.fusion import diclip_correlation
from wsss_core.cam.diclip.recursive import recursive_refinement, refined_cams
from wsss_core.cam.diclip.retrieval import static_retrieval, weighted_fusion
from wsss_core.cam.excel.cams import (
    IMAGENET_MEAN_255,
    IMAGENET_STD_255,
    MINMAX_EPSILON,
    calibrated_attention_affinity,
    minmax_per_map,
    network_input,
)
from wsss_core.cam.excel.surgery import feature_surgery, normalize_over_tokens
from wsss_core.cam.excel.svc import svc_forward
from wsss_core.cam.methods.diclip import SETTINGS
from wsss_core.models.clip import ClipModel
from wsss_core.models.clip_text import encode_text
from wsss_core.models.clip_visual import VisualRunner
from wsss_core.models.diffusion import SdHandle, vce_pass
from wsss_core.params.spec import field_default

LABEL_EPSILON = 1e-6  # cam_to_label_iseg min-maxes each class at the label's size


_default = functools.partial(field_default, SETTINGS)


@dataclass(frozen=True)
class DiclipSettings:
    """DiCLIP's knobs. The defaults are the `diclip` method's settings (wsss_core/cam/methods/diclip.py, the
    reference's training-free inference), read from there so they are written once; it says what each means."""

    input_size: int = _default("input_size")
    fused_layers: int = _default("fused_layers")
    vce_block: str = _default("vce_block")
    vce_heads: tuple[int, ...] = _default("vce_heads")
    acr_threshold: float = _default("acr_threshold")
    acr_iterations: int = _default("acr_iterations")
    acr_rounds: int = _default("acr_rounds")
    timestep_index: int = _default("timestep_index")
    inference_steps: int = _default("inference_steps")
    noise_seed: int = _default("noise_seed")
    retrieval_weight: float = _default("retrieval_weight")
    caa: bool = _default("caa")
    caa_layers: int = _default("caa_layers")
    sinkhorn_rounds: int = _default("sinkhorn_rounds")
    affinity_power: int = _default("affinity_power")
    box_threshold: float = _default("box_threshold")
    reference_quirks: bool = _default("reference_quirks")
    refine_block: str = _default("refine_block")
    refine_heads: tuple[int, ...] = _default("refine_heads")
    refine_iterations: int = _default("refine_iterations")
    store_resolution: str = "feature"


_MEAN = torch.tensor(IMAGENET_MEAN_255).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD_255).view(1, 3, 1, 1)


def sd_image(pixels: Tensor) -> np.ndarray:
    """An ImageNet-normalised input (3, H, W) back to uint8 (H, W, 3), truncated as the reference's
    denormalize_img: what VCE encodes."""
    restored = pixels.detach().float().cpu() * _STD[0] + _MEAN[0]
    return restored.clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


@torch.no_grad()
def diffusion_maps(sd: SdHandle, pixels: Tensor, settings: DiclipSettings, side: int) -> tuple[Tensor, Tensor | None]:
    """VCE and ACR for normalised square inputs (B, 3, S, S): ACR's affinity R (B, side², side²) on CLIP's grid, on
    the inputs' device, and the refinement layer's attention probabilities (B, heads, M, M), or None without
    refinement. One UNet pass per image, each with the noise of `noise_seed`."""
    blocks = [settings.vce_block] + ([settings.refine_block] if settings.refine_iterations else [])
    affinities, refines = [], []
    for item in pixels:
        recorders = vce_pass(
            sd,
            sd_image(item),
            blocks=list(dict.fromkeys(blocks)),
            logit_grid=side,
            timestep_index=settings.timestep_index,
            num_inference_steps=settings.inference_steps,
            size=tuple(item.shape[-2:]),
            seed=settings.noise_seed,
        )
        affinity = acr_affinity(
            recorders[settings.vce_block].resized_logits[None],
            side,
            heads=settings.vce_heads,
            threshold=settings.acr_threshold,
            iterations=settings.acr_iterations,
            rounds=settings.acr_rounds,
        )
        affinities.append(affinity[0].to(pixels.device))
        if settings.refine_iterations:
            refines.append(recorders[settings.refine_block].probabilities.to(pixels.device))
    return torch.stack(affinities), torch.stack(refines) if refines else None


@dataclass
class DiclipPass:
    """One image through DiCLIP: `cams` (P, h, w) in [0, 1] for `class_ids` on the grid `store_resolution` names,
    and the fused CLIP's `features` (1 + n, E), normalised over the tokens (the cache's keys are pooled from them)."""

    class_ids: list[int]
    cams: Tensor
    features: Tensor
    grid: tuple[int, int]


class DiclipCams:
    """DiCLIP training-free CAM generator for a dataset's classes.

    Arguments:
      clip: a loaded CLIP (`load_clip`) with a standard vision transformer.
      sd: the Stable Diffusion pipeline VCE reads (`load_sd_pipeline`; DiCLIP: SD 2.1 base).
      class_prompts: one prompt per foreground class, class 1 first.
      background_prompts: prompts of the background words (DiCLIP: CLIP-ES's 25 VOC / 23 COCO); may be empty.
      cache: (keys (Nk, E), values (Nk, 1 + C) one-hot) of an SD cache, or None (then `retrieval_weight` must be 0).
      settings: `DiclipSettings`.
      adapter: (a trained dynamic adapter, its weight): the CAM fuses its ReLU'd maps instead of the static
        retrieval, as a trained DiCLIP model's CAMs do (tools/infer_lam.py without --training_free; weight 0.1).
    """

    def __init__(
        self,
        clip: ClipModel,
        sd: SdHandle,
        class_prompts: Sequence[str],
        background_prompts: Sequence[str],
        cache: tuple[np.ndarray, np.ndarray] | None = None,
        settings: DiclipSettings = DiclipSettings(),
        adapter: tuple[Callable[[Tensor], Tensor], float] | None = None,
    ) -> None:
        self.clip, self.sd, self.settings = clip, sd, settings
        self.runner = VisualRunner(clip)
        patch, blocks = clip.patch_size, self.runner.num_layers
        if settings.input_size < patch or settings.input_size % patch:
            raise ValueError(f"input_size {settings.input_size} must be a multiple of the patch size {patch}")
        for name in ("fused_layers", "caa_layers"):
            if not 1 <= getattr(settings, name) <= blocks:
                raise ValueError(
                    f"{name} must be in 1..{blocks} (the blocks of this CLIP), got {getattr(settings, name)}"
                )
        if cache is None and settings.retrieval_weight and adapter is None:
            raise ValueError("retrieval_weight is not 0 but no SD cache was given")
        self.adapter = adapter
        self.side = settings.input_size // patch
        self.num_classes = len(class_prompts)
        texts = encode_text(clip, list(class_prompts) + list(background_prompts))  # (C + B, E), unit rows
        self.texts = texts
        background = texts[self.num_classes :]
        background_text = background.mean(0, keepdim=True) if len(background) else torch.zeros_like(texts[:1])
        self.class_texts = torch.cat([background_text, texts[: self.num_classes]])  # (1 + C, E): TSA's values' texts
        self.cache = None
        if cache is not None:
            keys, values = (torch.tensor(np.asarray(a, dtype=np.float32), device=clip.device) for a in cache)
            if keys.ndim != 2 or keys.shape[1] != texts.shape[1] or values.shape != (len(keys), 1 + self.num_classes):
                raise ValueError(
                    f"the SD cache holds keys {tuple(keys.shape)} and values {tuple(values.shape)}; expected (Nk, "
                    f"{texts.shape[1]}) and (Nk, {1 + self.num_classes}) for this CLIP and {self.num_classes} classes"
                )
            self.cache = (keys, values)
        self._mean, self._std = _MEAN, _STD

    @torch.no_grad()
    def __call__(self, image: np.ndarray, class_ids: Sequence[int]) -> DiclipPass:
        """CAMs of `image` (uint8 H x W x 3) for its present classes `class_ids` (1..C), and its features."""
        settings = self.settings
        class_ids = sorted({int(c) for c in class_ids})
        bad = [c for c in class_ids if not 1 <= c <= self.num_classes]
        if bad:
            raise ValueError(f"class ids {bad} are outside 1..{self.num_classes}")
        height, width = image.shape[:2]
        patch = self.clip.patch_size
        out_size = (
            (height, width) if settings.store_resolution == "image" else (-(-height // patch), -(-width // patch))
        )

        pixels = network_input(image, self._mean, self._std, settings.input_size, self.clip.device)
        affinity, refine_attention = diffusion_maps(self.sd, pixels, settings, self.side)
        refine_attention = None if refine_attention is None else refine_attention[0]
        caa_layers = range(-settings.caa_layers, 0) if settings.caa else ()
        result = svc_forward(
            self.runner,
            pixels,
            layers=settings.fused_layers,
            capture_layers=caa_layers,
            correlation=diclip_correlation(affinity),
        )
        features = normalize_over_tokens(result.features)
        cams = feature_surgery(features, self.texts)[:, 1:, : self.num_classes]
        if self.adapter is not None:  # a trained model's dynamic CAM replaces the static one
            adapter, weight = self.adapter
            cams = weighted_fusion(cams, torch.relu(adapter(features[:, 1:]).float()[..., 1:]), weight)
        elif self.cache is not None and settings.retrieval_weight:
            retrieved = static_retrieval(features, *self.cache, self.class_texts)
            cams = weighted_fusion(cams, retrieved, settings.retrieval_weight)
        if not class_ids:
            return DiclipPass([], torch.zeros((0, *out_size)), features[0].float().cpu(), result.grid)

        cams = cams[0, :, [c - 1 for c in class_ids]].T.reshape(len(class_ids), *result.grid)
        if settings.caa:
            transition = calibrated_attention_affinity(
                result, self.runner.num_heads, rounds=settings.sinkhorn_rounds, power=settings.affinity_power
            )
            cams = caa_refine(
                cams,
                transition,
                box_threshold=settings.box_threshold,
                normalize=False,
                reference_quirks=settings.reference_quirks,
            )
        if refine_attention is not None:
            refined = recursive_refinement(
                cams, refine_attention, iterations=settings.refine_iterations, heads=settings.refine_heads
            )
            cams = refined_cams(refined, range(len(class_ids)), len(class_ids), out_size)
            cams = minmax_per_map(cams, LABEL_EPSILON)  # cam_to_label_iseg's normalisation before the argmax
        else:
            cams = minmax_per_map(cams, MINMAX_EPSILON)
            if tuple(cams.shape[-2:]) != out_size:
                cams = F.interpolate(cams[None], size=out_size, mode="bilinear", align_corners=False)[0]
        return DiclipPass(class_ids, cams.float().cpu(), features[0].float().cpu(), result.grid)
