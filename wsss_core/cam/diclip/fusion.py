"""DiCLIP's fusion of the ACR affinity into CLIP: the new path of CLIP Surgery's dual path in the last blocks.

In each of the last `fused_layers` blocks (DiCLIP: 3, blocks -1, -2 and -3) the new path attends with, per head h
and s = head_dim ** -0.5,

    S_h = softmax(q q^T s) + 2 softmax(k k^T s),   S_h[patches, patches] += R

R being ACR's (B, n, n) affinity over the n patch tokens (the CLS row and column untouched), then the heads' maps
are summed into one, which every head applies to its values (svc_forward's dual path, as ExCEL's SVC with another
map). Summing after the addition means R enters once per head: 12 times for ViT-B/16.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def diclip_correlation(affinity: Tensor | None) -> Callable[[Any], Tensor]:
    """The per-head map of a block's trace (q, k), with ACR's (B, n, n) `affinity` added to its patch block (none:
    the map without diffusion, as DiCLIP computes it when no SD attention is given)."""

    def correlation(trace: Any) -> Tensor:
        scale = trace.q.shape[-1] ** -0.5
        maps = ((trace.q @ trace.q.transpose(-2, -1)) * scale).softmax(dim=-1)
        maps = maps + 2 * ((trace.k @ trace.k.transpose(-2, -1)) * scale).softmax(dim=-1)
        if affinity is None:
            return maps
        patches = maps[:, :, 1:, 1:] + affinity[:, None].to(maps.dtype)
        return torch.cat([maps[:, :, :1], torch.cat([maps[:, :, 1:, :1], patches], dim=-1)], dim=-2)

    return correlation
