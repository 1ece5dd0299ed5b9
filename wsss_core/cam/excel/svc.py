"""SVC, ExCEL's static visual calibration: a second path through CLIP's last blocks that keeps patch tokens
distinct (ExCEL's clip/clip_surgery_model.py; the dual path of CLIP Surgery with ExCEL's attention).

CLIP's q-k attention in its last blocks makes patch tokens alike (it serves the global image embedding), so ExCEL
reads the patches from a second path. In each of the last `layers` blocks (5 in ExCEL), from the block's ln_1 output
of the *original* path's tokens, with q, k, v per head and s = head_dim ** -0.5:

    S_h   = ( softmax(q q^T s) + softmax(k k^T s) + softmax(v v^T s) ) / 3      intra-correlation, rows sum to 1
    S     = sum_h S_h                                                           the same map for every head
    new  += out_proj( S v_h for every head h )                                  no FFN on the new path

The original path runs the block unchanged (q-k attention, FFN), so its tokens, and CLIP's own outputs, do not
change. The new path starts as the tokens entering the first calibrated block. Output features: the new path's
patch tokens with the original path's CLS token, through ln_post and proj (all 1 + h*w tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from wsss_core.models.clip_visual import VisualRunner

SVC_LAYERS = 5


def intra_correlation(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """Mean of the q-q, k-k and v-v self-attention maps: (B, H, N, d) x3 -> (B, H, N, N), each row summing to 1.

    `scale` defaults to d ** -0.5 (ExCEL's head_dim ** -0.5 for all three)."""
    if not q.shape == k.shape == v.shape or q.ndim != 4:
        raise ValueError(
            f"q, k, v must share one (B, H, N, d) shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    maps = [((x * scale) @ x.transpose(-2, -1)).softmax(dim=-1) for x in (q, k, v)]
    return (maps[0] + maps[1] + maps[2]) / 3


@dataclass
class SvcPass:
    """One calibrated forward pass. Shapes: B batch, N = 1 + h*w tokens, D width, E embedding, H heads.

    features: (B, N, E) ln_post + proj of [original CLS, calibrated patches] (not normalised).
    original: (B, N, D) the original path's last tokens (CLIP's own, unchanged by the calibration).
    attentions: block index -> (B, H, N, N) the original path's q-k attention, for the blocks asked for.
    ln_1: block index -> (B, N, D) the original path's ln_1 output, for the same blocks.
    first_calibrated: index of the first block with the dual path.
    """

    grid: tuple[int, int]
    features: Tensor
    original: Tensor
    first_calibrated: int
    attentions: dict[int, Tensor] = field(default_factory=dict)
    ln_1: dict[int, Tensor] = field(default_factory=dict)


def excel_correlation(trace) -> Tensor:
    """ExCEL's per-head map of a block's trace (q, k, v): the intra-correlation."""
    return intra_correlation(trace.q, trace.k, trace.v)


@torch.no_grad()
def svc_forward(
    runner: VisualRunner,
    images: Tensor,
    *,
    layers: int = SVC_LAYERS,
    capture_layers: Sequence[int] = (),
    correlation: Callable[[Any], Tensor] = excel_correlation,
) -> SvcPass:
    """Run CLIP's visual tower on normalised images (B, 3, H, W) with the dual path in its last `layers` blocks.

    `capture_layers` (negative indices allowed) name blocks whose original-path attention and ln_1 output are kept
    (ExCEL's CAA reads the last 6). `correlation(trace)` gives the new path's (B, H, N, N) map per head from a
    block's q, k and v; its heads are summed (DiCLIP's map: wsss_core/cam/diclip/fusion.py)."""
    if not 1 <= layers <= runner.num_layers:
        raise ValueError(f"svc layers must be in 1..{runner.num_layers} (the blocks of this CLIP), got {layers}")
    if any(not -runner.num_layers <= i < runner.num_layers for i in capture_layers):
        raise ValueError(f"capture_layers {list(capture_layers)} are out of range for {runner.num_layers} blocks")
    captured = {i % runner.num_layers for i in capture_layers}
    first = runner.num_layers - layers
    x = runner.embed(images.to(runner.clip.device))
    calibrated = None
    attentions, normed = {}, {}
    for index in range(runner.num_layers):
        block_input = x
        x, trace = runner.block(index, x, capture=index in captured)
        if index in captured:  # capture materialises the block's attention weights
            attentions[index], normed[index] = trace.attention, trace.ln_1
        if index < first:
            continue
        summed = correlation(trace).sum(dim=1, keepdim=True)  # (B, 1, N, N): one map for every head
        update = runner.blocks[index].ls_1(runner.merge_heads(index, summed @ trace.v))
        calibrated = (block_input if calibrated is None else calibrated) + update
    tokens = torch.cat([x[:, :1], calibrated[:, 1:]], dim=1)
    return SvcPass(runner.grid_of(images), runner.project(tokens), x, first, attentions, normed)
