"""WeakTr's adaptive attention fusion (AAF, paper section III-A): one weight per attention map, learned from the
maps' own features, instead of averaging every head of every layer equally.

For each of the K = depth x heads maps, the attention block's output features of that head (B, K, N, D) are pooled
over the N tokens (mean, or max as WeakTr trains it), reduced to one number by two linear layers (D -> D / r_f -> 1),
and the K numbers pass a squeeze-and-excitation MLP across maps (K -> K / r -> ReLU -> K -> sigmoid). The fused
attention is every map times its weight; callers average over K. The parameter names are the reference module's, so
its weights load as they are.
"""

from __future__ import annotations

import torch
from torch import nn


class AdaptiveAttentionFusion(nn.Module):
    def __init__(self, maps: int, reduction: float, head_dim: int, feat_reduction: int = 8, pool: str = "max") -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be avg or max, got {pool!r}")
        hidden, feat_hidden = int(maps / reduction), int(head_dim / feat_reduction)
        if hidden < 1 or feat_hidden < 1:
            raise ValueError(
                f"reduction {reduction} of {maps} maps or feat_reduction {feat_reduction} of {head_dim} features "
                "leaves no hidden unit"
            )
        self.pool = pool
        self.attn_head_ffn = nn.Sequential(
            nn.Linear(maps, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, maps, bias=False), nn.Sigmoid()
        )
        self.attn_feat_ffn = nn.Sequential(nn.Linear(head_dim, feat_hidden), nn.Linear(feat_hidden, 1))

    def map_weights(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K, N, D) per-map features -> (B, K, 1, 1) weights in (0, 1)."""
        pooled = features.amax(dim=2) if self.pool == "max" else features.mean(dim=2)
        per_map = self.attn_feat_ffn(pooled).squeeze(-1)
        return self.attn_head_ffn(per_map)[..., None, None]

    def forward(self, features: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """(B, K, N, D) features and (B, K, N, N) attention maps -> the weighted maps (B, K, N, N)."""
        return attention * self.map_weights(features)
