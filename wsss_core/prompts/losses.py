"""FMA-WSSS's prompt-learning losses (paper section 4.3) and the alternatives of its Table 5.

Classification task, on the raw foreground logits Y (B, C) and the labels (B, C):
- `multilabel_contrastive_loss` (eq. 12): every present class p is contrasted with the absent classes only,
  -log(exp Y_p / (exp Y_p + sum_{absent n} exp Y_n)), averaged over all present classes of the batch;
- `multilabel_bce_loss`: the usual multi-label soft-margin (binary cross-entropy) loss.

Segmentation task, on the CAMs of the present classes (P, h, w) and the coarse seeds (P, H, W) of their images:
- `cam_activation_loss` (eqs. 13-15): inside the seed region of its class a CAM should reach the region's own
  maximum (detached, at least 0), outside it (ignored pixels aside) it should not be positive;
- `pixel_bce_loss`: pixel-wise cross-entropy with sigmoid(CAM) as the class probability.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = 255


def _check_logits(logits: Tensor, labels: Tensor) -> Tensor:
    if logits.ndim != 2 or labels.shape != logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must both be (B, C)")
    return labels.bool()


def multilabel_contrastive_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Eq. 12 averaged over every present class of the batch (images with no present or no absent class skipped).

    `logits` (B, C) raw foreground logits, `labels` (B, C) 0/1 or bool. Returns a scalar; 0 (still attached to the
    graph) when no image has both a present and an absent class.
    """
    present = _check_logits(logits, labels)
    valid = present.any(dim=1) & (~present).any(dim=1)
    if not valid.any():
        return logits.sum() * 0.0
    logits, present = logits[valid].float(), present[valid]
    # log(exp Y_p + sum_absent exp Y_n) for every p: logsumexp over [Y_p, absent logits], stable for logits ~100
    absent_logsumexp = logits.masked_fill(present, float("-inf")).logsumexp(dim=1, keepdim=True)  # (V, 1)
    per_class = torch.logaddexp(logits, absent_logsumexp.expand_as(logits)) - logits  # (V, C)
    return per_class[present].mean()


def multilabel_bce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy on sigmoid(logits), averaged over classes and images (MultiLabelSoftMarginLoss)."""
    present = _check_logits(logits, labels)
    return F.binary_cross_entropy_with_logits(logits.float(), present.float())


def _cams_at_seed_size(cams: Tensor, seeds: Tensor, class_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    if cams.ndim != 3 or seeds.ndim != 3 or cams.shape[0] != seeds.shape[0]:
        raise ValueError(f"cams {tuple(cams.shape)} and seeds {tuple(seeds.shape)} must be (P, h, w) and (P, H, W)")
    class_ids = torch.as_tensor(class_ids, device=seeds.device)
    if class_ids.shape != (cams.shape[0],):
        raise ValueError(f"class_ids has shape {tuple(class_ids.shape)}, expected ({cams.shape[0]},)")
    cams = cams.float()
    if cams.shape[-2:] != seeds.shape[-2:]:
        cams = F.interpolate(cams[:, None], size=seeds.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    foreground = seeds == class_ids.view(-1, 1, 1)
    background = ~foreground & (seeds != IGNORE_INDEX)
    return cams, foreground, background


def cam_activation_loss(cams: Tensor, seeds: Tensor, class_ids: Tensor) -> Tensor:
    """Eqs. 13-15: CAM activation loss of the present classes' CAMs against coarse seeds.

    Arguments:
      cams: (P, h, w) CAMs (no ReLU, no normalisation), upsampled bilinearly to the seed size when it differs.
      seeds: (P, H, W) seed labels of the image each CAM belongs to (0 background, 255 ignored).
      class_ids: (P,) the class each CAM explains.
    Foreground term: |m - cam| on the seed pixels of the CAM's class, m = max of the CAM there, clamped at 0 and
    detached (so the loss never pulls the maximum down). Background term: max(cam, 0) on the other non-ignored
    pixels. Both summed over all maps and divided by the number of foreground plus background pixels.
    """
    cams, foreground, background = _cams_at_seed_size(cams, seeds, class_ids)
    count = foreground.sum() + background.sum()
    if count == 0:
        return cams.sum() * 0.0
    peak = cams.masked_fill(~foreground, float("-inf")).amax(dim=(1, 2), keepdim=True)
    peak = peak.clamp_min(0.0).detach()  # a class without seed pixels gets -inf -> 0, and no foreground term
    foreground_loss = ((peak - cams).abs() * foreground).sum()
    background_loss = (cams.clamp_min(0.0) * background).sum()
    return (foreground_loss + background_loss) / count


def pixel_bce_loss(cams: Tensor, seeds: Tensor, class_ids: Tensor) -> Tensor:
    """Table 5's pixel-wise cross-entropy: sigmoid(cam) is the probability of the CAM's class; target 1 on its seed
    pixels, 0 on the other non-ignored pixels; averaged over those pixels of all maps. Shapes as in
    `cam_activation_loss`."""
    cams, foreground, background = _cams_at_seed_size(cams, seeds, class_ids)
    labelled = foreground | background
    if not labelled.any():
        return cams.sum() * 0.0
    return F.binary_cross_entropy_with_logits(cams[labelled], foreground[labelled].float())
