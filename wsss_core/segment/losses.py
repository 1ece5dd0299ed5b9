"""Segmentation losses on seed labels: cross entropy, its background/foreground-balanced form, and WeakTr's
gradient-clipping loss.

Labels hold class indices 0..K-1 with 255 for pixels the seeds leave unlabelled. Every loss is a mean over
labelled pixels only, and is a zero that still carries the graph when a batch has no labelled pixel at all (a crop
that fell entirely into an ignored region), instead of the NaN that `F.cross_entropy` returns there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
LOSSES = ("ce", "balanced_ce", "gradient_clipping")


def _check(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if (
        logits.ndim != 4
        or labels.ndim != 3
        or logits.shape[0] != labels.shape[0]
        or logits.shape[2:] != labels.shape[1:]
    ):
        raise ValueError(
            f"logits (B, K, H, W) and labels (B, H, W) do not fit: {tuple(logits.shape)} vs {tuple(labels.shape)}"
        )


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel cross entropy (B, H, W) in float32 (0 at ignored pixels) and the mask of labelled pixels."""
    _check(logits, labels)
    labels = labels.long()
    valid = labels != IGNORE_INDEX
    # AMP computes logits in half precision; the log-softmax is taken in float32 for a stable loss.
    losses = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")
    return losses, valid


def _masked_mean(losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (losses * mask).sum() / mask.sum().clamp(min=1)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy over labelled pixels (label 255 ignored)."""
    losses, valid = pixel_cross_entropy(logits, labels)
    return _masked_mean(losses, valid)


def balanced_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of the background CE (over background pixels) and the foreground CE (over foreground pixels).

    The WeCLIP head's seg loss: each term is averaged over its own pixel count, so small objects weigh as much as
    the background. Deviation: when a batch has pixels of only one kind, the loss is that term alone (the reference
    returns NaN there and the step is lost).
    """
    losses, valid = pixel_cross_entropy(logits, labels)
    background = valid & (labels == 0)
    foreground = valid & (labels != 0)
    terms = [_masked_mean(losses, mask) for mask in (background, foreground) if bool(mask.any())]
    if not terms:
        return losses.sum() * 0.0
    return torch.stack(terms).mean()


def block_means(values: torch.Tensor, weights: torch.Tensor, block: int) -> torch.Tensor:
    """Weighted mean of `values` over non-overlapping block x block tiles of the last two dimensions (and over all
    leading ones, e.g. a batch), broadcast back to (H, W).

    Tiles on the bottom and right edges are smaller when H or W is not a multiple of `block`; each tile's mean is over
    its own pixels (weight 0 drops a pixel from its tile's mean). A tile without weight gets 0.
    """
    height, width = values.shape[-2:]
    weighted = (values * weights).reshape(-1, height, width).sum(dim=0)
    counts = weights.reshape(-1, height, width).sum(dim=0)
    rows, cols = -(-height // block), -(-width // block)
    pad = (0, cols * block - width, 0, rows * block - height)
    tile_sums = F.pad(weighted, pad).reshape(rows, block, cols, block).sum(dim=(1, 3))
    tile_counts = F.pad(counts, pad).reshape(rows, block, cols, block).sum(dim=(1, 3))
    means = torch.where(tile_counts > 0, tile_sums / tile_counts.clamp(min=1e-12), torch.zeros_like(tile_sums))
    tiled = means.repeat_interleave(block, dim=0).repeat_interleave(block, dim=1)
    return tiled[:height, :width]


@dataclass
class ClippedLoss:
    """The gradient-clipping loss of one batch.

    loss: the value to back-propagate; unclipped_mean: lambda_global, the plain mean CE; clipping: whether
    lambda_global <= tau switched clipping on; kept: (B, H, W) bool, labelled pixels whose gradient survives.
    """

    loss: torch.Tensor
    unclipped_mean: float
    clipping: bool
    kept: torch.Tensor


def gradient_clipping_loss(
    logits: torch.Tensor, labels: torch.Tensor, tau: float = 1.2, patch: int = 120
) -> ClippedLoss:
    """WeakTr's gradient-clipping loss (paper eqs. 11-15).

    G is the per-pixel CE. lambda_global is its mean over the batch's labelled pixels. While lambda_global > tau
    (early training) nothing is clipped and the loss is the plain mean CE. Otherwise each patch x patch tile of the
    image plane gets lambda_i, the mean of G over the tile's labelled pixels across the whole batch (as the reference
    averages the batch before pooling), and a pixel whose G exceeds max(lambda_i, lambda_global) contributes that
    threshold as a constant: min(G, threshold) keeps its value bounded and its gradient zero. The loss is the mean of
    min(G, threshold) over labelled pixels.

    Images need not be multiples of `patch`: the last row and column of tiles are smaller and averaged over their
    own pixels (the reference pads wrongly there and fails). Deviation: ignored pixels are left out of every mean;
    the reference counts them as zero loss, which lowers lambda_global with the amount of ignored area.
    """
    if tau < 0:
        raise ValueError(f"gradient clipping start value tau must be >= 0, got {tau}")
    if patch < 1:
        raise ValueError(f"gradient clipping patch size must be >= 1, got {patch}")
    losses, valid = pixel_cross_entropy(logits, labels)
    weights = valid.float()
    if not bool(valid.any()):
        return ClippedLoss(losses.sum() * 0.0, 0.0, False, valid)
    detached = losses.detach()
    global_mean = (detached * weights).sum() / weights.sum()
    if float(global_mean) > tau:
        return ClippedLoss(_masked_mean(losses, valid), float(global_mean), False, valid)
    local = block_means(detached, weights, patch)
    threshold = torch.maximum(local, global_mean).unsqueeze(0)
    # Eq. 14 keeps pixels with G <= threshold: a `where` gives them their full gradient even at a tie, where
    # torch.minimum would split it, and replaces larger losses by the constant threshold (gradient zero).
    below = detached <= threshold
    clipped = torch.where(below, losses, threshold)
    kept = valid & below
    return ClippedLoss(_masked_mean(clipped, valid), float(global_mean), True, kept)


def segmentation_loss(name: str, logits: torch.Tensor, labels: torch.Tensor, tau: float, patch: int) -> torch.Tensor:
    """The training loss `name` (one of LOSSES) of logits (B, K, H, W) against labels (B, H, W)."""
    if name == "ce":
        return cross_entropy(logits, labels)
    if name == "balanced_ce":
        return balanced_cross_entropy(logits, labels)
    if name == "gradient_clipping":
        return gradient_clipping_loss(logits, labels, tau, patch).loss
    raise ValueError(f"unknown segmentation loss {name!r}; expected one of {', '.join(LOSSES)}")
