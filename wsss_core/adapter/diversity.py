"""ExCEL's diversity loss (paper eq. 11): the adapter features F_d should be alike for patches of one class and
unalike otherwise, with the pairs' labels taken from the pseudo masks (ExCEL's model/model_excel.py, model/losses.py
get_aff_loss, utils/camutils.py cams_to_affinity_label and get_mask_by_radius).

    pred   = sigmoid( 3 * (cos(F_d, F_d) - 1.0 * mean cos) )              (B, hw, hw), with gradient
    target = 1 where the two patches have the same label, 0 where not, 255 (ignored) beyond `radius` patches
    loss   = 0.5 * sum_pos (1 - pred) / (N+ + 1) + 0.5 * sum_neg pred / (N- + 1)

Details as in the reference:
  - a patch's label is the label map's pixel at the patch's top-left corner (nearest-neighbour downsampling of
    the (B, H, W) labels to the token grid, F.interpolate's `nearest`);
  - "within radius" is a square window: |row - row'| <= radius and |col - col'| <= radius (Chebyshev distance);
  - the diagonal (a patch with itself) counts as a positive pair: the training script calls the second of the two
    `cams_to_affinity_label` definitions in camutils.py, the one that does not ignore it;
  - pixels labelled `ignore_index` ignore every pair they are part of (the pseudo labels have none);
  - the mean in `pred` is one scalar over the whole batch, with gradient (torch.mean of the batch's matrices);
  - N+ and N- count the positive and negative pairs of the whole batch, each plus 1.
The paper writes the two means without the 0.5 and the +1; the code's form is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_core.adapter.lvc import BETA, GAMMA, centred_similarity

IGNORE_INDEX = 255


def affinity_prediction(features: Tensor, *, beta: float = BETA, gamma: float = GAMMA) -> Tensor:
    """sigmoid(gamma * (cos - beta * mean cos)) (B, hw, hw) of the adapter features (B, C, h, w), float32, with grad.

    The same centred similarity as LVC's (lvc.py), squashed instead of masked; it is also the `seg_attn` that
    ExCEL's dynamic CAA multiplies into the attention (pseudo_labels.py)."""
    return torch.sigmoid(centred_similarity(features, beta=beta, gamma=gamma))


def radius_mask(height: int, width: int, radius: int, *, device=None) -> Tensor:
    """(hw, hw) bool: True for token pairs at most `radius` rows and `radius` columns apart (get_mask_by_radius)."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    near_rows = (rows[:, None] - rows[None, :]).abs() <= radius
    near_cols = (cols[:, None] - cols[None, :]).abs() <= radius
    return near_rows & near_cols


def affinity_targets(labels: Tensor, grid: tuple[int, int], radius: int, *, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Pair labels (B, hw, hw) int64 in {0, 1, ignore_index} from label maps (B, H, W) on a token grid (h, w)."""
    if labels.ndim != 3:
        raise ValueError(f"labels must be shaped (B, H, W), got {tuple(labels.shape)}")
    tokens = F.interpolate(labels[:, None].float(), size=tuple(grid), mode="nearest").flatten(1)  # (B, hw)
    same = (tokens[:, :, None] == tokens[:, None, :]).long()
    far = ~radius_mask(grid[0], grid[1], radius, device=labels.device)
    same[:, far] = ignore_index
    unlabelled = tokens == ignore_index
    same = same.masked_fill(unlabelled[:, :, None] | unlabelled[:, None, :], ignore_index)
    return same


def diversity_loss(prediction: Tensor, targets: Tensor) -> Tensor:
    """0.5 * mean over positive pairs of (1 - pred) + 0.5 * mean over negative pairs of pred, each count + 1
    (get_aff_loss); pairs whose target is neither 0 nor 1 are ignored."""
    if prediction.shape != targets.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and targets {tuple(targets.shape)} differ")
    positive, negative = (targets == 1).float(), (targets == 0).float()
    prediction = prediction.float()
    positive_loss = (positive * (1 - prediction)).sum() / (positive.sum() + 1)
    negative_loss = (negative * prediction).sum() / (negative.sum() + 1)
    return 0.5 * positive_loss + 0.5 * negative_loss
