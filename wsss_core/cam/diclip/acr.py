"""ACR: refine the self-attention of a Stable Diffusion layer into a token affinity for CLIP's last blocks.

Input: the VCE map of one UNet self-attention layer (DiCLIP: up_blocks[1].attentions[2], 20 heads), its q and k
bilinearly resized to CLIP's token grid and multiplied without scale or softmax: (B, heads, N, N) logits, N = side².

  1. each key column divided by its maximum over the queries (+1e-5); entries below `threshold` zeroed; rows
     normalised (+1e-5). A row may end up all zero.
  2. the chosen heads chained by matrix product (DiCLIP: heads 1 and 2, 0-based): R = A_1 @ A_2.
  3. R's columns (each token's attention profile over the queries) clustered around grid anchors by symmetric KL,
     `iterations` rounds: a token joins its nearest anchor, each anchor becomes its members' mean, and an anchor
     without members is dropped for good. The anchors are the tokens at rows and columns 0, s, 2s, ... with
     s = side // sqrt(9): DiCLIP asks for 9 clusters, and on its 20x20 grid this gives 16 anchors (s = 6).
  4. M[p, j] = 1 where tokens p and j share a cluster; `rounds` times R <- M R / (row sums of M + 1e-6), each row
     replaced by its cluster's mean row (idempotent after the first round, up to the 1e-6).

As the reference computes them: the KL distances in float16 with 1e-5 added to both sides (exact zeros of R
become 1e-6 first), ties going to the first anchor. Hand-checked cases and the reference's own functions agree
(tests/test_diclip.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

REFERENCE_CLUSTERS = 9  # what DiCLIP passes; the anchor grid it gives is sqrt(9) = 3 apart in units of side / 3


def anchor_tokens(side: int, clusters: int = REFERENCE_CLUSTERS) -> torch.Tensor:
    """Flat indices of the anchor tokens on a side x side grid: rows and columns 0, s, 2s, ... below side,
    s = side // sqrt(clusters) (16 anchors on 20x20)."""
    stride = int(side // math.sqrt(clusters))
    if stride < 1:
        raise ValueError(f"ACR: a {side}x{side} grid is too small for {clusters} clusters")
    lines = torch.arange(0, side, stride)
    return (lines[:, None] * side + lines[None, :]).flatten()


def symmetric_kl(anchors: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(K, D) anchors and (P, D) points -> (K, P) half the Jeffreys divergence, in float16 with 1e-5 added to
    both sides (the vectors are not renormalised)."""
    a = anchors.to(torch.float16)[:, None, :] + 1e-5
    b = points.to(torch.float16)[None, :, :] + 1e-5
    log_ratio = torch.log(a) - torch.log(b)
    return 0.5 * (a * log_ratio).sum(-1) - 0.5 * (b * log_ratio).sum(-1)


def kl_clusters(affinity: torch.Tensor, anchors: torch.Tensor, iterations: int = 5) -> torch.Tensor:
    """Cluster labels 0..K-1 (in the order of the anchors that kept members) of the columns of the (N, N)
    `affinity`, clustered around the columns `anchors` by symmetric KL."""
    points = affinity.T
    points = torch.where(points == 0, torch.full_like(points, 1e-6), points)
    centres, labels = points[anchors], None
    for _ in range(iterations):
        labels = symmetric_kl(centres, points).argmin(dim=0)
        kept = labels.unique()  # sorted; a centre that lost every member is dropped for good
        centres = torch.stack([points[labels == k].mean(0) for k in kept])
        labels = torch.searchsorted(kept, labels)
    return labels


def same_cluster(labels: torch.Tensor) -> torch.Tensor:
    """(N,) labels -> (N, N) float matrix, 1 where two tokens share a cluster."""
    return (labels[:, None] == labels[None, :]).float()


def cluster_mean(affinity: torch.Tensor, labels: torch.Tensor, rounds: int = 3) -> torch.Tensor:
    """`rounds` times R <- M R / (row sums of M + 1e-6), M = same_cluster(labels): each row becomes the mean row of
    its cluster."""
    members = same_cluster(labels)
    for _ in range(rounds):
        affinity = (members @ affinity) / (members.sum(-1, keepdim=True) + 1e-6)
    return affinity


def acr_affinity(
    sd_logits: torch.Tensor,
    side: int,
    *,
    heads: Sequence[int] = (1, 2),
    threshold: float = 0.2,
    clusters: int = REFERENCE_CLUSTERS,
    iterations: int = 5,
    rounds: int = 3,
) -> torch.Tensor:
    """(B, H, N, N) VCE logits on a side x side grid -> (B, N, N) refined affinity R, float32."""
    attention = sd_logits.float()
    attention = attention / (attention.amax(dim=-2, keepdim=True) + 1e-5)
    attention = torch.where(attention < threshold, torch.zeros_like(attention), attention)
    attention = attention / (attention.sum(dim=-1, keepdim=True) + 1e-5)
    chained = attention[:, heads[0]]
    for head in heads[1:]:
        chained = chained @ attention[:, head]
    anchors = anchor_tokens(side, clusters).to(chained.device)
    return torch.stack([cluster_mean(r, kl_clusters(r, anchors, iterations), rounds) for r in chained])
