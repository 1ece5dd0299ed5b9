"""DiCLIP's recursive refinement of CAMs by Stable Diffusion's attention, for its training labels.

Input: the CAMs of an image's present classes on CLIP's token grid, and the softmax attention probabilities of a
finer UNet self-attention layer (DiCLIP: up_blocks[3].attentions[1], 40x40 tokens, 5 heads) from the same VCE pass.

  1. the CAMs bilinearly resized to the SD grid; per class, its minimum over tokens subtracted and divided by the sum.
  2. the transition: the mean of the chosen heads (DiCLIP: 1 and 2, 0-based), each key column divided by its maximum
     over the queries, then T + 0.02 log10(e T) where T > 0, clamped at 0 (a soft threshold: affinities under about
     0.024 of their column's maximum become 0, larger ones shrink a little), rows normalised.
  3. `iterations` times: c <- T c, then per class minus its minimum and over its sum (DiCLIP: 5 for VOC training, 10
     for COCO and for training-free labels).
  4. to the mask size through a 512x512 intermediate as the reference does (bilinear, per-class min-max at 512), absent
     classes zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

INTERMEDIATE_SIZE = 512  # the reference resizes every refined map to 512x512 and min-maxes it there


def transition_matrix(sd_probabilities: torch.Tensor, heads: Sequence[int] = (1, 2)) -> torch.Tensor:
    """(H, M, M) attention probabilities -> (M, M) row-stochastic transition (step 2 above). Like the reference,
    nothing guards a row whose every affinity falls under the threshold."""
    transition = sd_probabilities[list(heads)].float().mean(0)
    transition = transition / transition.amax(dim=-2, keepdim=True)
    boost = 0.02 * torch.log10(torch.e * transition)
    transition = torch.clamp(transition + torch.where(transition == 0, torch.zeros_like(boost), boost), min=0)
    return transition / transition.sum(dim=-1, keepdim=True)


def recursive_refinement(
    cams: torch.Tensor, sd_probabilities: torch.Tensor, *, iterations: int, heads: Sequence[int] = (1, 2)
) -> torch.Tensor:
    """(P, h, w) CAMs of the present classes on CLIP's grid -> (P, side, side) refined on the SD layer's grid."""
    side = round(sd_probabilities.shape[-1] ** 0.5)
    flows = F.interpolate(cams[None].float(), size=(side, side), mode="bilinear", align_corners=False)[0]
    flows = flows.flatten(1).T  # (tokens, classes)
    flows = flows - flows.amin(dim=0, keepdim=True)
    flows = flows / flows.sum(dim=0, keepdim=True)
    transition = transition_matrix(sd_probabilities, heads)
    for _ in range(iterations):
        flows = transition @ flows
        flows = flows - flows.amin(dim=0, keepdim=True)
        flows = flows / flows.sum(dim=0, keepdim=True)
    return flows.T.reshape(-1, side, side)


def refined_cams(
    refined: torch.Tensor, class_ids: Sequence[int], n_classes: int, size: tuple[int, int]
) -> torch.Tensor:
    """(P, side, side) refined maps of `class_ids` -> (n_classes, *size) at the mask size, through the reference's
    512x512 min-maxed intermediate; classes not present are zero."""
    maps = F.interpolate(refined[None], size=(INTERMEDIATE_SIZE,) * 2, mode="bilinear", align_corners=False)[0]
    maps = maps - maps.amin(dim=(-2, -1), keepdim=True)
    maps = maps / maps.amax(dim=(-2, -1), keepdim=True)
    full = torch.zeros(n_classes, INTERMEDIATE_SIZE, INTERMEDIATE_SIZE, dtype=maps.dtype, device=maps.device)
    full[list(class_ids)] += maps
    return F.interpolate(full[None], size=size, mode="bilinear", align_corners=False)[0]
