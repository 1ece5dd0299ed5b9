"""Softmax-GradCAM on ViT tokens (CLIP-ES), with the second-order training variant of FMA-WSSS.

CLIP-ES scores an image against the text embeddings of the present foreground classes and of all background
words, takes a softmax over those logits, and explains each present class c with Grad-CAM on the tokens that
enter the last transformer block (its `ln_1` output):

    w_c  = mean over patch tokens n of  d softmax(logits)[c] / d A[n]        (one weight per channel, CLS dropped)
    CAM  = ReLU( sum_d w_c[d] * A[n, d] ),  patches reshaped to the (h, w) grid, then min-max per map.

How often the map is min-maxed is a choice (`normalization`): "once" (the default) min-maxes once; "clip_es"
repeats CLIP-ES's code, which min-maxes twice (see `clip_es_minmax`).

The softmax is what makes the map class-discriminative: raising c's probability means lowering the others',
so regions that look like a competing class (or like background words) get negative weight.

`softmax_gradcam` takes the gradients of all targets in one batched autograd call (`is_grads_batched`, a vmap
over one-hot output selectors) instead of one backward pass per class; `softmax_gradcam_loop` is the
one-backward-per-target baseline and gives the same maps.

FMA-WSSS trains prompts through the CAM: it calls the same computation with `create_graph=True`, no ReLU and no
normalisation. The activations enter the product detached and only the gradient weights keep their graph, so
the CAM loss reaches the prompts through d(softmax)/dA (a second-order term). Both functions here always use
the activations detached in the product; the returned CAM carries a graph only through the weights, and only
when `create_graph=True`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# CLIP-ES's scale_cam_image divides by (1e-7 + max); the same epsilon keeps a constant map at zero, not NaN.
MINMAX_EPS = 1e-7


def minmax(x: Tensor, dims: int | Sequence[int], eps: float = MINMAX_EPS) -> Tensor:
    """Min-max normalise `x` over `dims`: (x - min) / (max - min + eps); a constant slice becomes all zeros."""
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    shifted = x - x.amin(dim=dims, keepdim=True)
    return shifted / (shifted.amax(dim=dims, keepdim=True) + eps)


# How the ReLU'd CAM is min-maxed: "once" (the project's default) or "clip_es" (twice, as CLIP-ES's code does).
GRADCAM_NORMALIZATIONS = ("once", "clip_es")


def check_gradcam_normalization(normalization: str) -> None:
    if normalization not in GRADCAM_NORMALIZATIONS:
        raise ValueError(f"gradcam normalization must be one of {GRADCAM_NORMALIZATIONS}, got {normalization!r}")


def clip_es_minmax(x: Tensor, dims: int | Sequence[int]) -> Tensor:
    """CLIP-ES's normalisation of its Grad-CAM: `minmax` twice, each with the 1e-7 epsilon.

    In CLIP-ES (linyq2117/CLIP-ES @ 3893f81) the ReLU'd CAM goes through `scale_cam_image`
    (pytorch_grad_cam/utils/image.py, lines 51-61: `img - min`, then `img / (1e-7 + max)`) twice:
    `BaseCAM.compute_cam_per_layer` (pytorch_grad_cam/base_cam.py, lines 144-145: `np.maximum(cam, 0)`, then
    `scale_cam_image`), then `BaseCAM.aggregate_multi_layers` (lines 150-154: concatenate the one target layer,
    `np.maximum(., 0)`, mean over that one layer, `scale_cam_image` again). The second ReLU and the mean over a
    single layer change nothing, so this is minmax(minmax(x)), in float32 like the reference's numpy arrays.

    Both passes carry the epsilon, so no division by zero happens and no NaN or inf appears (unless `x` holds
    them): an exactly flat map (e.g. all zeros after the ReLU) becomes all zeros, as in the reference. A map whose
    range r is small against 1e-7 is where the two choices differ: one pass gives a maximum of r / (r + 1e-7)
    (0.5 at r = 1e-7), the second pass stretches that back to about 1, so a near-flat map (float noise) is spread
    over the whole [0, 1]. For ranges well above 1e-7 the two agree within about 1e-7 / r.
    """
    return minmax(minmax(x, dims), dims)


def _check_shapes(activations: Tensor, logits: Tensor, grid: tuple[int, int]) -> None:
    if activations.ndim not in (2, 3):
        raise ValueError(f"activations must have shape (N, D) or (B, N, D), got {tuple(activations.shape)}")
    if logits.ndim != activations.ndim - 1:
        raise ValueError(
            f"logits shape {tuple(logits.shape)} does not match activations {tuple(activations.shape)}: "
            "expected (K,) with (N, D) activations or (B, K) with (B, N, D)"
        )
    if activations.ndim == 3 and logits.shape[0] != activations.shape[0]:
        raise ValueError(f"logits batch {logits.shape[0]} != activations batch {activations.shape[0]}")
    height, width = grid
    num_patches = activations.shape[-2] - 1  # token 0 is CLS
    if height < 1 or width < 1 or height * width != num_patches:
        raise ValueError(f"grid {grid} does not hold the {num_patches} patch tokens (N - 1, CLS excluded)")
    if not activations.requires_grad:
        raise ValueError("activations do not require grad: they must be part of the graph that produced logits")
    if not logits.requires_grad:
        raise ValueError("logits do not require grad: they must be computed from the activations")


def _index_rows(indices: Sequence[int] | Tensor, batch: int, name: str, device: torch.device) -> Tensor:
    """Indices as a (batch, T) long tensor: 1-D input is shared by every item, 2-D input is per item."""
    rows = torch.as_tensor(indices, device=device)
    if rows.numel() == 0:  # an empty list comes back as float
        rows = rows.reshape(batch, 0).long()
    if rows.dtype.is_floating_point or rows.dtype == torch.bool:
        raise ValueError(f"{name} must be integer class indices, got dtype {rows.dtype}")
    if rows.ndim == 1:
        rows = rows.expand(batch, -1)
    elif rows.ndim != 2 or rows.shape[0] != batch:
        raise ValueError(f"{name} must have shape (T,) or ({batch}, T), got {tuple(rows.shape)}")
    return rows.long()


def _softmax_mask(softmax_over: Sequence[int] | Tensor | None, logits: Tensor) -> Tensor:
    """Bool mask (B, K) of the logits the softmax runs over."""
    batch, num_logits = logits.shape
    if softmax_over is None:
        return torch.ones_like(logits, dtype=torch.bool)
    over = torch.as_tensor(softmax_over, device=logits.device)
    if over.dtype == torch.bool:
        if over.shape not in ((num_logits,), (batch, num_logits)):
            raise ValueError(f"softmax_over mask must have shape ({num_logits},) or {tuple(logits.shape)}")
        return over.expand(batch, num_logits)
    rows = _index_rows(over, batch, "softmax_over", logits.device)
    if rows.numel() and (rows.min() < 0 or rows.max() >= num_logits):
        raise ValueError(f"softmax_over indices {rows.unique().tolist()} fall outside [0, {num_logits})")
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(1, rows, True)


def _class_probabilities(logits: Tensor, mask: Tensor, epsilon: float) -> Tensor:
    logits = logits.float()
    if epsilon == 0:
        return logits.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    # FMA-WSSS's masked softmax: shift by the max over ALL logits, then add epsilon to the masked sum. The shift
    # changes how much epsilon matters, so it is kept as in the reference.
    exp = torch.exp(logits - logits.amax(dim=-1, keepdim=True)) * mask
    return exp / (exp.sum(dim=-1, keepdim=True) + epsilon)


def _prepare(
    activations: Tensor,
    logits: Tensor,
    target_indices: Sequence[int] | Tensor,
    grid: tuple[int, int],
    softmax_over: Sequence[int] | Tensor | None,
    epsilon: float,
) -> tuple[Tensor, Tensor]:
    """Check the inputs; return the class probabilities (B, K) and one-hot output selectors (T, B, K)."""
    _check_shapes(activations, logits, grid)
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    batched_logits = logits if logits.ndim == 2 else logits.unsqueeze(0)
    batch, num_logits = batched_logits.shape
    targets = _index_rows(target_indices, batch, "target_indices", logits.device)
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_logits):
        raise ValueError(f"target_indices {targets.unique().tolist()} fall outside [0, {num_logits})")
    mask = _softmax_mask(softmax_over, batched_logits)
    outside = ~mask.gather(1, targets)
    if outside.any():
        raise ValueError(f"target indices {targets[outside].unique().tolist()} are not among the softmax_over entries")

    probabilities = _class_probabilities(batched_logits, mask, epsilon)
    if logits.ndim == 1:
        probabilities = probabilities.squeeze(0)
    # Row t selects target t of every item: items are independent in the graph (no batch statistics in a ViT at
    # inference), so one selector row yields each item's own gradient.
    selectors = torch.zeros((targets.shape[1], batch, num_logits), dtype=probabilities.dtype, device=logits.device)
    selectors.scatter_(2, targets.T.unsqueeze(-1), 1.0)
    if logits.ndim == 1:
        selectors = selectors.squeeze(1)
    return probabilities, selectors


def _cams_from_gradients(
    activations: Tensor, gradients: Tensor, grid: tuple[int, int], relu: bool, normalize: bool, normalization: str
) -> Tensor:
    """CAMs (B, T, h, w) from activations (B, N, D) and per-target gradients (T, B, N, D), CLS dropped."""
    weights = gradients[:, :, 1:].float().mean(dim=2)  # (T, B, D): spatial mean over patch tokens
    patches = activations.detach()[:, 1:].float()  # (B, hw, D): detached, so only the weights carry a graph
    # Explicit multiply-and-sum rather than einsum: autocast would run einsum in half precision.
    cams = (patches.unsqueeze(1) * weights.transpose(0, 1).unsqueeze(2)).sum(dim=-1)  # (B, T, hw)
    cams = cams.reshape(*cams.shape[:2], *grid)
    if relu:
        cams = cams.clamp_min(0)
    if normalize:
        cams = clip_es_minmax(cams, (-2, -1)) if normalization == "clip_es" else minmax(cams, (-2, -1))
    return cams


def _finish(
    activations: Tensor,
    gradients: Tensor,
    grid: tuple[int, int],
    relu: bool,
    normalize: bool,
    batched: bool,
    normalization: str,
) -> Tensor:
    if not batched:
        activations, gradients = activations.unsqueeze(0), gradients.unsqueeze(1)
    cams = _cams_from_gradients(activations, gradients, grid, relu, normalize, normalization)
    return cams if batched else cams.squeeze(0)


def _empty_result(activations: Tensor, grid: tuple[int, int]) -> Tensor:
    shape = (0, *grid) if activations.ndim == 2 else (activations.shape[0], 0, *grid)
    return activations.new_zeros(shape, dtype=torch.float32)


def softmax_gradcam(
    activations: Tensor,
    logits: Tensor,
    target_indices: Sequence[int] | Tensor,
    grid: tuple[int, int],
    *,
    softmax_over: Sequence[int] | Tensor | None = None,
    epsilon: float = 0.0,
    relu: bool = True,
    normalize: bool = True,
    normalization: str = "once",
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> Tensor:
    """Softmax-GradCAM of every target in one batched autograd call.

    Arguments:
      activations: (N, D) or (B, N, D) tokens, CLS at index 0, patches in row-major grid order; part of the graph
        that produced `logits` (CLIP-ES: the last block's `ln_1` output).
      logits: (K,) or (B, K) scores (CLIP-ES: 100 * cos(image, text) over [present fg classes + all bg words]).
      target_indices: logit indices to explain: (T,) shared by every item, or (B, T) per item.
      grid: (h, w) patch grid, h * w == N - 1.
      softmax_over: logits the softmax runs over: indices (T',) or (B, T'), or a bool mask (K,) or (B, K);
        default all K. The targets must be among them; the other entries get probability 0.
      epsilon: 0 gives the exact softmax over the selected entries. FMA-WSSS uses 1e-5: exp(x - max over all K)
        masked, divided by (masked sum + epsilon).
      relu, normalize: ReLU and then per-map min-max (CLIP-ES, the default). FMA-WSSS training: both False.
      normalization: how `normalize` min-maxes: "once" (default), or "clip_es" = twice, as CLIP-ES's code does
        (`clip_es_minmax`; differs from "once" only on maps whose range is not large against 1e-7).
      create_graph: keep the graph of the gradient weights so the CAM can be backpropagated (second order) to
        whatever produced the logits (FMA-WSSS's prompts). The activations are always detached in the product,
        so no gradient flows through the A factor of w * A. With False the CAM carries no graph.
      retain_graph: keep the forward graph after the call (default: as `create_graph`, like torch.autograd.grad).

    Returns float32 CAMs (T, h, w) for 2-D activations, (B, T, h, w) for 3-D.
    """
    check_gradcam_normalization(normalization)
    probabilities, selectors = _prepare(activations, logits, target_indices, grid, softmax_over, epsilon)
    if selectors.shape[0] == 0:
        return _empty_result(activations, grid)
    (gradients,) = torch.autograd.grad(
        probabilities,
        activations,
        grad_outputs=selectors,
        is_grads_batched=True,
        retain_graph=retain_graph,
        create_graph=create_graph,
    )  # (T, *activations.shape)
    batched = activations.ndim == 3
    return _finish(activations, gradients, grid, relu, normalize, batched=batched, normalization=normalization)


def softmax_gradcam_loop(
    activations: Tensor,
    logits: Tensor,
    target_indices: Sequence[int] | Tensor,
    grid: tuple[int, int],
    *,
    softmax_over: Sequence[int] | Tensor | None = None,
    epsilon: float = 0.0,
    relu: bool = True,
    normalize: bool = True,
    normalization: str = "once",
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> Tensor:
    """Same result as `softmax_gradcam`, with one backward pass per target (the baseline it is benchmarked
    against, and how the CLIP-ES code does it). Arguments as in `softmax_gradcam`."""
    check_gradcam_normalization(normalization)
    probabilities, selectors = _prepare(activations, logits, target_indices, grid, softmax_over, epsilon)
    num_targets = selectors.shape[0]
    if num_targets == 0:
        return _empty_result(activations, grid)
    keep_at_end = create_graph if retain_graph is None else retain_graph
    gradients = []
    for index in range(num_targets):
        (gradient,) = torch.autograd.grad(
            probabilities,
            activations,
            grad_outputs=selectors[index],
            retain_graph=keep_at_end or index < num_targets - 1,
            create_graph=create_graph,
        )
        gradients.append(gradient)
    stacked, batched = torch.stack(gradients), activations.ndim == 3
    return _finish(activations, stacked, grid, relu, normalize, batched=batched, normalization=normalization)
