"""One pass of the frozen CLIP for ExCEL's adapter learning: the original path of every block (the WeCLIP head's
input and CAA's attention) and the pieces of SVC's calibrated path, so that the calibrated features can be built
twice from one pass, without and with LVC's learnt shift (lvc.py).

ExCEL's clip/clip_surgery_model.py runs the whole tower under no_grad and, in its last `svc_layers` blocks (5), a
second path beside the original one (SVC, wsss_core/cam/excel/svc.py): from the original path's ln_1 tokens of
each such block, with q, k, v per head,

    S      = sum_h ( softmax(q q^T s) + softmax(k k^T s) + softmax(v v^T s) ) / 3       (B, 1, N, N)
    new   += out_proj( S v_h for every head h )                                        no FFN on the new path

The new path never feeds the original one, so the original path's tokens, attention and q/k/v do not depend on
whether (or how) the new path is shifted. ExCEL's training script therefore gets the same original path from its
first forward (static CAMs, head input, CAA attention) and from its second forward with `ex_feats` (LVC CAMs); here
the pass runs once and keeps S and v of the calibrated blocks, and `calibrated_features` replays the new path.

What the reference's WeCLIP head reads (`head_tokens`, `reference_head_tokens`): its transformer stores every
block's output as a view of the tensors the dual path then updates *in place* (`x += x_res`, `x_ori += x_ori_res`,
and the final `x[0] = x_ori[0]`), so with calibrated blocks c..L-1 the stored list ends up as
  block c-1         the calibrated path's final tokens, with the original path's final CLS token (pre ln_post)
  blocks c..L-2     block b's output plus block b+1's attention residual (the next block's state before its FFN)
  other blocks      their own output
`head_tokens="reference"` (the default of the `excel` method) feeds the head that list, as ExCEL trains and
predicts; "original" feeds every block's own output, as WeCLIP intends.

Attention kept for CAA follows the reference's scales: a single-path block returns nn.MultiheadAttention's weights,
averaged over heads; a calibrated block returns its original q-k attention *summed* over heads
(`torch.sum(attn_ori, dim=1)`), so those rows sum to `heads`, not 1. CAA's layer mean then weighs calibrated
blocks `heads` times more (wsss_core/cam/excel/cams.py reproduces the same quirk for the training-free CAMs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from wsss_core.cam.excel.svc import excel_correlation
from wsss_core.models.clip_visual import VisualRunner


@dataclass
class ClipPass:
    """What one pass of the frozen CLIP keeps. B batch, N = 1 + h*w tokens, D width, H heads, L attention layers.

    tokens: the original path's output of every block, (B, N, D) each (the WeCLIP head reads all of them).
    attentions: (L, B, N, N) the original path's attention of the last L blocks, at the reference's scales.
    svc_start: (B, N, D) the tokens entering the first calibrated block (where the new path starts).
    correlations / values: per calibrated block, S (B, 1, N, N) and v (B, H, N, d).
    mid_tokens: per calibrated block, the original path after its attention residual, before its FFN (B, N, D).
    first_calibrated: index of the first calibrated block.
    """

    grid: tuple[int, int]
    tokens: list[Tensor]
    attentions: Tensor | None
    svc_start: Tensor
    correlations: list[Tensor]
    values: list[Tensor]
    mid_tokens: list[Tensor]
    first_calibrated: int


@torch.no_grad()
def clip_pass(
    runner: VisualRunner,
    images: Tensor,
    *,
    svc_layers: int,
    attention_layers: int,
    correlation: Callable[[Any], Tensor] = excel_correlation,
) -> ClipPass:
    """Run the frozen tower on normalised images (B, 3, H, W) (H, W multiples of the patch size), keeping the
    original path's tokens, the attention of the last `attention_layers` blocks and SVC's pieces of the last
    `svc_layers` blocks. `correlation(trace)` is the new path's per-head map (ExCEL's intra-correlation; DiCLIP's
    with the diffusion affinity, wsss_core/cam/diclip/fusion.py), summed over the heads."""
    blocks = runner.num_layers
    for name, value in (("svc_layers", svc_layers), ("attention_layers", attention_layers)):
        if not 0 <= value <= blocks:
            raise ValueError(f"{name} must be in 0..{blocks} (the blocks of this CLIP), got {value}")
    if svc_layers < 1:
        raise ValueError("svc_layers must be at least 1: the CAMs are read from the calibrated path")
    first_calibrated, first_captured = blocks - svc_layers, blocks - attention_layers
    x = runner.embed(images.to(runner.clip.device))
    tokens, attentions, correlations, values, mid_tokens = [], [], [], [], []
    svc_start = None
    for index in range(blocks):
        if index == first_calibrated:
            svc_start = x
        x_in = x
        x, trace = runner.block(index, x_in, capture=index >= first_captured)
        if index >= first_captured:
            # nn.MultiheadAttention averages over heads; the reference's calibrated blocks sum over them
            reduce = trace.attention.sum if index >= first_calibrated else trace.attention.mean
            attentions.append(reduce(dim=1))
        if index >= first_calibrated:
            correlations.append(correlation(trace).sum(dim=1, keepdim=True))
            values.append(trace.v)
            mid_tokens.append(x_in + runner.blocks[index].ls_1(trace.attention_output))
        tokens.append(x)
    return ClipPass(
        grid=runner.grid_of(images),
        tokens=tokens,
        attentions=torch.stack(attentions) if attentions else None,
        svc_start=svc_start,
        correlations=correlations,
        values=values,
        mid_tokens=mid_tokens,
        first_calibrated=first_calibrated,
    )


@torch.no_grad()
def calibrated_tokens(runner: VisualRunner, clip_out: ClipPass, shift: Tensor | None = None) -> Tensor:
    """The new path's tokens (B, N, D) after the last calibrated block.

    `shift` (B, h*w, h*w) is LVC's attention (lvc.py), added on the patch block of every head's map before the
    heads are summed, in every calibrated block, as the reference adds `ex_attn` to `attn[:, :, 1:, 1:]` per head:
    the summed map therefore gains `heads * shift`.
    """
    heads = runner.num_heads
    x = clip_out.svc_start
    for offset, (correlation, value) in enumerate(zip(clip_out.correlations, clip_out.values, strict=True)):
        if shift is not None:
            correlation = correlation.clone()
            correlation[:, :, 1:, 1:] += heads * shift.to(correlation.dtype).unsqueeze(1)
        index = clip_out.first_calibrated + offset
        x = x + runner.blocks[index].ls_1(runner.merge_heads(index, correlation @ value))
    return x


def output_tokens(clip_out: ClipPass, calibrated: Tensor) -> Tensor:
    """SVC's output tokens (B, N, D): the original path's final CLS token with the new path's patch tokens."""
    return torch.cat([clip_out.tokens[-1][:, :1], calibrated[:, 1:]], dim=1)


def calibrated_features(runner: VisualRunner, clip_out: ClipPass, shift: Tensor | None = None) -> Tensor:
    """SVC's output features (B, N, E): `output_tokens` of `calibrated_tokens`, through ln_post and proj (not
    normalised)."""
    with torch.no_grad():
        return runner.project(output_tokens(clip_out, calibrated_tokens(runner, clip_out, shift)))


def reference_head_tokens(clip_out: ClipPass, calibrated: Tensor) -> list[Tensor]:
    """The per-block tokens ExCEL's head reads, given the static new path's final tokens `calibrated` (B, N, D); see
    the module docstring."""
    tokens = list(clip_out.tokens)
    first, last = clip_out.first_calibrated, len(tokens) - 1
    if first > 0:
        tokens[first - 1] = output_tokens(clip_out, calibrated)
    for index in range(first, last):
        tokens[index] = clip_out.mid_tokens[index + 1 - first]
    return tokens
