"""ExCEL's online pseudo labels: every training iteration turns the batch's CAMs into one label map per crop
(scripts/train_voc.py with utils/affutils.refine_cams_with_aff and refine_cams_with_bkg_weclip).

For each image and its present classes:
  1. CAA: a transition matrix T from the original path's attention of the last `caa_layers` blocks (6), patch rows
     and columns only: their mean over layers (static), 3 Sinkhorn rounds, symmetrised, squared
     (compute_trans_mat; wsss_core/cam/caa.patch_affinity). From `dynamic_from` iterations on (14k) the dynamic
     form: the head's affinity prediction P = sigmoid(3 (cos F_d - mean)) (diversity.affinity_prediction) picks the
     layers, d_l = sum(P - A_l), layers with d_l <= mean_l d_l kept, A = their mean, then A * P.
  2. each class's CAM propagated along T inside the boxes around where it exceeds `box_threshold` (0.79) of its
     maximum (column mask), not normalised (wsss_core/cam/caa.caa_refine, normalize=False);
  3. min-max per class with epsilon 1e-7, bilinear to the crop size (scale_cam_image with cv2.resize);
  4. background (1 - max_c CAM_c) ** 1 in front; PAR (20 iterations, dilations 1, 2, 4, 8, 12, 24) against the crop;
  5. argmax over [background, present classes]: labels 0 or a present class id; no ignore region, not even where
     the crop was padded (the reference fills its padding with black pixels and labels it like any other).

The CAMs themselves are SVC's static CAMs before `dynamic_from` and LVC's dynamic CAMs from then on (the model
computes both, model.py); which one and which CAA form is `Schedule`'s decision, as is the source of the diversity
loss's pair labels: these pseudo labels, or from `seg_affinity_from` iterations on (24k) the argmax of the
segmentation head's own prediction.

Deviations: PAR gets the normalised crop rather than the reference's uint8-rounded denormalised copy (PAR's weights
do not depend on a per-channel affine colour scale, wsss_core/refine/par.py; only that rounding differs); an image
without any present class gets an all-background map (the reference fails on it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_core.cam.caa import caa_refine, patch_affinity
from wsss_core.cam.excel.cams import MINMAX_EPSILON, minmax_per_map
from wsss_core.refine.par import DILATIONS, ITERATIONS, par_refine

SINKHORN_ROUNDS = 3  # compute_trans_mat: one normalisation, then two more rounds
AFFINITY_POWER = 2  # compute_trans_mat: trans_mat @ trans_mat
LAYER_EPSILON = 1e-5  # the dynamic form's division by the number of kept layers


@dataclass(frozen=True)
class Schedule:
    """When ExCEL's training switches (0-based iteration, as the reference's `n_iter >= 14000`)."""

    dynamic_from: int = 14000
    seg_affinity_from: int = 24000

    def dynamic(self, step: int) -> bool:
        """LVC's dynamic CAMs and the dynamic CAA form from this iteration on."""
        return step >= self.dynamic_from

    def seg_affinity(self, step: int) -> bool:
        """Pair labels of the diversity loss from the segmentation prediction from this iteration on."""
        return step >= self.seg_affinity_from


@dataclass(frozen=True)
class PseudoLabelSettings:
    """How CAMs become labels (the reference's values as defaults)."""

    box_threshold: float = 0.79
    reference_quirks: bool = False
    background_power: float = 1.0
    par_dilations: tuple[int, ...] = DILATIONS
    par_iterations: int = ITERATIONS


def caa_transition(attentions: Tensor, seg_affinity: Tensor | None = None) -> Tensor:
    """CAA's transition matrix (hw, hw) of one image from its attention (L, N, N) (token 0 = CLS, dropped), static
    (`seg_affinity` None) or dynamic with the head's affinity prediction (hw, hw); see the module docstring."""
    if attentions.ndim != 3 or attentions.shape[-1] != attentions.shape[-2]:
        raise ValueError(f"attentions must be shaped (L, N, N), got {tuple(attentions.shape)}")
    patches = attentions[:, 1:, 1:].float()
    if seg_affinity is None:
        matrix = patches.mean(dim=0)
    else:
        seg_affinity = seg_affinity.detach().float()
        if seg_affinity.shape != patches.shape[1:]:
            raise ValueError(f"seg_affinity {tuple(seg_affinity.shape)} does not match {tuple(patches.shape[1:])}")
        difference = (seg_affinity.unsqueeze(0) - patches).flatten(1).sum(dim=1)  # (L,)
        kept = (difference <= difference.mean()).float().view(-1, 1, 1)
        matrix = (kept * patches).sum(dim=0) / (kept.sum() + LAYER_EPSILON)
        matrix = matrix * seg_affinity
    return patch_affinity(matrix, rounds=SINKHORN_ROUNDS, power=AFFINITY_POWER)


def labels_from_cams(
    images: Tensor,
    refined: Sequence[Tensor],
    class_ids: Sequence[Sequence[int]],
    settings: PseudoLabelSettings = PseudoLabelSettings(),
) -> Tensor:
    """Steps 3-5 for a batch: per image its CAA-refined CAMs (P_i, h, w) of the present classes `class_ids[i]`
    (1..C, in the maps' order) and the crops (B, 3, H, W) -> labels (B, H, W) int64 in {0} and each image's classes.

    PAR runs once for the batch: every image's [background, classes] is padded with zero maps to the batch's widest,
    which PAR leaves at zero (it is linear in the maps and refines each image and map apart) and the argmax skips."""
    height, width = images.shape[-2:]
    stacks = []
    for maps, present in zip(refined, class_ids, strict=True):
        if maps.shape[0] != len(present):
            raise ValueError(f"{maps.shape[0]} maps for {len(present)} classes")
        if not len(present):  # nothing present: background only
            stacks.append(torch.ones((1, height, width), device=images.device))
            continue
        cams = minmax_per_map(maps.float(), MINMAX_EPSILON)
        cams = F.interpolate(cams[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        background = (1.0 - cams.amax(dim=0, keepdim=True)) ** settings.background_power
        stacks.append(torch.cat([background, cams]))
    channels = max(stack.shape[0] for stack in stacks)
    padded = torch.stack([F.pad(stack, (0, 0, 0, 0, 0, channels - stack.shape[0])) for stack in stacks])
    scores = par_refine(images.float(), padded, dilations=settings.par_dilations, iterations=settings.par_iterations)
    labels = []
    for item, present in enumerate(class_ids):
        keys = torch.tensor([0, *present], dtype=torch.long, device=scores.device)
        labels.append(keys[scores[item, : len(keys)].argmax(dim=0)])
    return torch.stack(labels)


def label_from_cams(
    image: Tensor, refined: Tensor, class_ids: Sequence[int], settings: PseudoLabelSettings = PseudoLabelSettings()
) -> Tensor:
    """`labels_from_cams` of one crop (3, H, W) -> (H, W)."""
    return labels_from_cams(image[None], [refined], [list(class_ids)], settings)[0]


@torch.no_grad()
def pseudo_labels(
    images: Tensor,
    cams: Tensor,
    attentions: Tensor,
    class_ids: Sequence[Sequence[int]],
    settings: PseudoLabelSettings = PseudoLabelSettings(),
    seg_affinity: Tensor | None = None,
) -> Tensor:
    """Label maps (B, H, W) int64 of a batch.

    Arguments:
      images: (B, 3, H, W) the normalised crops.
      cams: (B, C, h, w) CAMs of every foreground class on the token grid (class c at channel c - 1).
      attentions: (L, B, N, N) the original path's attention of the CAA layers (visual.ClipPass.attentions).
      class_ids: per image, its present classes (1..C).
      seg_affinity: (B, hw, hw) the head's affinity prediction for the dynamic CAA form, or None (static).
    """
    if cams.ndim != 4 or cams.shape[0] != images.shape[0] or len(class_ids) != images.shape[0]:
        raise ValueError(f"cams {tuple(cams.shape)}, images {tuple(images.shape)}, {len(class_ids)} label sets")
    refined, sorted_ids = [], []
    for item, present in enumerate(class_ids):
        present = sorted({int(c) for c in present})
        transition = caa_transition(attentions[:, item], None if seg_affinity is None else seg_affinity[item])
        maps = cams[item, [c - 1 for c in present]].float()
        if present:
            maps = caa_refine(
                maps,
                transition,
                box_threshold=settings.box_threshold,
                normalize=False,
                reference_quirks=settings.reference_quirks,
            )
        refined.append(maps)
        sorted_ids.append(present)
    return labels_from_cams(images, refined, sorted_ids, settings)
