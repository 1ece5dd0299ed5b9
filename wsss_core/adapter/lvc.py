"""LVC, ExCEL's learnable visual calibration: a learnt shift of SVC's attention from the adapter's features.

The adapter is the front of the WeCLIP head (per-layer MLPs on every block's tokens, concatenated, 1x1 conv to 256,
Dropout2d): its output F_d (B, C, h, w) is trained by the diversity loss (diversity.py) to group patches of one
object. LVC turns it into an attention over patches (ExCEL's clip/clip_surgery_model.py, the `ex_feats` branch):

    f      = F_d / ||F_d|| per token (over channels)
    cos    = f^T f                                          (B, hw, hw)
    r      = gamma * (cos - beta * mean(cos))               beta = 1.0, gamma = 3.0
    R      = r where r >= 0, -inf elsewhere
    shift  = softmax(R) over the last axis                  (B, hw, hw), rows sum to 1

and adds it to the patch block of SVC's attention in every calibrated block (visual.calibrated_features), which
gives the dynamic CAMs. F_d enters detached: LVC itself has no gradient, only F_d's own diversity loss trains it.

Quirk kept: `mean(cos)` is one scalar over the whole batch (the reference takes torch.mean of the (B, hw, hw)
tensor), so an image's shift depends on the other images of its batch. A token's own similarity (1) is at least the
mean, so every row keeps at least its diagonal; a token whose features are all zero has cos 0 everywhere and, if the
mean is positive, an all -inf row whose softmax is NaN, as in the reference (it does not occur with a trained head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BETA = 1.0  # weight of the mean subtracted from the cosine similarity
GAMMA = 3.0  # scale of the centred similarity


def centred_similarity(features: Tensor, *, beta: float = BETA, gamma: float = GAMMA) -> Tensor:
    """gamma * (cos - beta * mean(cos)) of the tokens of features (B, C, h, w): (B, hw, hw), in float32; the mean is
    over the whole batch (see the module docstring)."""
    if features.ndim != 4:
        raise ValueError(f"features must be shaped (B, C, h, w), got {tuple(features.shape)}")
    tokens = F.normalize(features.float().flatten(2), dim=1)  # (B, C, hw), unit over channels
    cosine = tokens.transpose(1, 2) @ tokens
    return (cosine - cosine.mean() * beta) * gamma


def lvc_shift(features: Tensor, *, beta: float = BETA, gamma: float = GAMMA) -> Tensor:
    """LVC's attention shift softmax(R) (B, hw, hw) from the adapter features F_d (B, C, h, w), no gradient."""
    with torch.no_grad():
        logits = centred_similarity(features.detach(), beta=beta, gamma=gamma)
        logits = logits.masked_fill(logits < 0, float("-inf"))
        return logits.softmax(dim=-1)
