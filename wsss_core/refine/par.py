"""PAR, pixel-adaptive refinement (AFA, Ru et al. CVPR 2022), as WeCLIP and ExCEL use it to refine CAMs into
pseudo labels: a few steps of a local random walk over the maps, with weights from the image's colours.

Each pixel looks at 8 neighbours (the 3x3 ring) at every dilation d (1, 2, 4, 8, 12, 24: K = 48 neighbours),
borders replicated. With I the image resized to the maps' size (bilinear, align_corners=True), j a neighbour:

    colour  a_j = -( |I - I_j| / (std_j' I_j' + 1e-8) / 0.3 )^2      per channel, std over the K neighbours
                  (unbiased), then averaged over the channels
    place   p_j = -( dist_j / (std_j' dist_j' + 1e-8) / 0.3 )^2      dist_j = d for edge neighbours, d * sqrt(2)
                                                                     for diagonal ones; the same at every pixel
    weight  w_j = softmax_j(a_j) + 0.01 * softmax_j(p_j)
    maps    M  <- sum_j w_j * M_j                                    repeated 20 times, every channel alike

Quirk kept from the reference: the weights of a pixel sum to 1.01, not 1 (the position term is added to a
normalised colour term, not mixed in), so every iteration scales the maps by about 1.01 (a constant map comes
out 1.01^20 = 1.22 times larger) on top of smoothing them. Callers that argmax over channels are unaffected; the
others should not read the refined values as probabilities. The centre pixel itself is not among its neighbours.

The image's colour scale does not matter: |I - I_j| and the standard deviation scale together, so an image in
[0, 1], in [0, 255] or normalised with a per-channel mean and std gives the same weights up to the 1e-8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

DILATIONS = (1, 2, 4, 8, 12, 24)
ITERATIONS = 20
COLOUR_SCALE = 0.3  # w1 in the reference: divides the standardised colour and place distances
PLACE_WEIGHT = 0.01  # w2: weight of the position term added to the colour weights
_EPSILON = 1e-8

# The 8 neighbours of the 3x3 ring as (row, column) unit offsets, in the reference's order (its 3x3 kernels read
# top-left, top, top-right, left, right, bottom-left, bottom, bottom-right).
RING = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _check_dilations(dilations: Sequence[int]) -> tuple[int, ...]:
    dilations = tuple(int(d) for d in dilations)
    if not dilations or any(d < 1 for d in dilations):
        raise ValueError(f"dilations must be a non-empty list of integers >= 1, got {list(dilations)}")
    return dilations


def _windows(dilations: Sequence[int]) -> tuple[int, list[tuple[int, int]]]:
    """The replicate padding that holds every neighbour, and neighbour k's (top, left) window in the padded copy,
    dilation-major in RING's order: a neighbour off the image reads the nearest border pixel."""
    dilations = _check_dilations(dilations)
    pad = max(dilations)
    return pad, [(pad + dy * d, pad + dx * d) for d in dilations for dy, dx in RING]


def dilated_neighbours(x: Tensor, dilations: Sequence[int] = DILATIONS) -> Tensor:
    """The 8 ring neighbours of every pixel at each dilation: (B, C, H, W) -> (B, C, 8 * len(dilations), H, W),
    dilation-major, borders replicated: windows of one padded copy (twice as fast as gathering by index)."""
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    pad, windows = _windows(dilations)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    return torch.stack([padded[..., top : top + height, left : left + width] for top, left in windows], dim=2)


def place_weights(dilations: Sequence[int] = DILATIONS, *, device=None) -> Tensor:
    """softmax over the K neighbours of -(dist / std(dist) / 0.3)^2: (K,), the same at every pixel."""
    unit = torch.tensor([math.sqrt(2.0) if dy and dx else 1.0 for dy, dx in RING], dtype=torch.float32)
    distances = torch.cat([unit * d for d in _check_dilations(dilations)]).to(device)  # float32 products, as AFA
    logits = -((distances / (distances.std() + _EPSILON) / COLOUR_SCALE) ** 2)
    return logits.softmax(dim=0)


def par_weights(images: Tensor, size: tuple[int, int], dilations: Sequence[int] = DILATIONS) -> Tensor:
    """PAR's neighbour weights (B, K, h, w) at `size` = (h, w) for images (B, C, H, W); each pixel's K weights sum
    to 1 + 0.01 (see the module docstring)."""
    if images.ndim != 4:
        raise ValueError(f"images must be shaped (B, C, H, W), got {tuple(images.shape)}")
    images = F.interpolate(images.float(), size=tuple(size), mode="bilinear", align_corners=True)
    neighbours = dilated_neighbours(images, dilations)  # (B, C, K, h, w)
    spread = neighbours.std(dim=2, keepdim=True)  # unbiased, over the neighbours (the centre is not one)
    # In place on the neighbours (the same operations in the same order, so the same bits): each (B, C, K, h, w)
    # temporary moves K times the image through memory, and these weights are most of PAR's time on a CPU.
    colour = neighbours.sub_(images.unsqueeze(2)).abs_().div_(spread + _EPSILON).div_(COLOUR_SCALE).pow_(2).neg_()
    colour = colour.mean(dim=1)  # (B, K, h, w)
    place = place_weights(dilations, device=images.device).view(1, -1, 1, 1)
    return colour.softmax(dim=1) + PLACE_WEIGHT * place


def par_refine(
    images: Tensor,
    maps: Tensor,
    *,
    dilations: Sequence[int] = DILATIONS,
    iterations: int = ITERATIONS,
) -> Tensor:
    """Refine score maps (B, C, h, w) with PAR against images (B, 3, H, W); returns (B, C, h, w) float32.

    The images are resized to the maps' size (bilinear, align_corners=True), so pass the maps at the resolution
    the result is wanted at (ExCEL and WeCLIP: the CAMs upsampled to image or crop size, background first). Runs on
    the tensors' device; images in any per-channel affine colour scale (see the module docstring).
    """
    if maps.ndim != 4:
        raise ValueError(f"maps must be shaped (B, C, h, w), got {tuple(maps.shape)}")
    if images.ndim != 4 or images.shape[0] != maps.shape[0]:
        raise ValueError(
            f"images {tuple(images.shape)} must be (B, channels, H, W) with the maps' batch size {maps.shape[0]}"
        )
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    height, width = maps.shape[-2:]
    weights = par_weights(images.to(maps.device), (height, width), dilations).unsqueeze(1)  # (B, 1, K, h, w)
    # One neighbour window at a time, accumulated in place: stacking all K (B, C, K, h, w) moves K times the maps
    # through memory per iteration. The sum runs in another order than the reference's (its PAR matched within
    # 1.4e-6 instead of 3.6e-7).
    pad, windows = _windows(dilations)
    refined = maps.float()
    for _ in range(iterations):
        padded = F.pad(refined, (pad, pad, pad, pad), mode="replicate")
        accumulated = None
        for k, (top, left) in enumerate(windows):
            neighbour = padded[..., top : top + height, left : left + width]
            if accumulated is None:
                accumulated = neighbour * weights[:, :, k]
            else:
                accumulated.addcmul_(neighbour, weights[:, :, k])
        refined = accumulated
    return refined
