"""Class-aware attention-based affinity (CAA, CLIP-ES): refine CAMs by propagating them along ViT attention.

The self-attention between patch tokens says which patches look alike. CLIP-ES turns it into a transition
matrix and spreads each class's CAM along it, restricted to the boxes around where that class already fires:

    A   = mean over the chosen layers (last 8) and heads of the attention, CLS row/column dropped   (hw, hw)
    T   = Sinkhorn(A): alternately divide by column sums and row sums (3 rounds), nearly doubly stochastic
    T   = (T + T^T) / 2, then T^t with t = 2                                                      (affinity)
    M_c = union of the bounding boxes of the regions where CAM_c > threshold * max CAM_c
    CAM_c' = min-max( (T * M_c[columns]) @ vec(CAM_c) )

Masking the columns means a patch only collects activation from patches inside the class's boxes; patches
anywhere may receive it. Both CLIP-ES and FMA-WSSS take the matrix power first and mask afterwards.

A = the attention is CLIP-ES's choice (`affinity_source="attention"`). It presumes attention that groups patches
of one object, which a large CLIP learns and a tiny one may not (benchmarks/caa_affinity.py measures it). The
alternative `"features"` builds A from the same layers' tokens instead, as AffinityNet builds its random walk:
    A = (mean over the layers of max(cos(ln_1 token i, ln_1 token j), 0)) ** beta      (AffinityNet beta = 8)
and goes through the same Sinkhorn, symmetrisation, power and box masking.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor
from torch.nn import functional as F

from wsss_core.cam.gradcam import minmax

if TYPE_CHECKING:
    from wsss_core.models.clip_visual import BlockTrace


def sinkhorn_normalize(attn: Tensor, rounds: int = 3) -> Tensor:
    """Sinkhorn normalisation of a non-negative matrix: each round divides every column by its sum, then every
    row by its sum. `rounds=0` returns the input unchanged (as float32)."""
    if attn.ndim != 2:
        raise ValueError(f"attention must be a 2-D matrix, got shape {tuple(attn.shape)}")
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    matrix = attn.float()
    if rounds == 0:
        return matrix
    if (matrix < 0).any() or not torch.isfinite(matrix).all():
        raise ValueError("attention must be finite and non-negative for Sinkhorn normalisation")
    # Scaling by positive factors keeps the zero pattern, so non-zero rows and columns now guarantee no
    # division by zero in any later round.
    if (matrix.sum(dim=0) == 0).any() or (matrix.sum(dim=1) == 0).any():
        raise ValueError("attention has an all-zero row or column; Sinkhorn normalisation is undefined")
    for _ in range(rounds):
        matrix = matrix / matrix.sum(dim=0, keepdim=True)
        matrix = matrix / matrix.sum(dim=1, keepdim=True)
    return matrix


def attention_affinity(attentions: Tensor, *, rounds: int = 3, power: int = 2) -> Tensor:
    """Affinity (hw, hw) from the attention maps of the chosen layers (CLIP-ES: the last 8).

    `attentions` is (L, heads, N, N) or already head-averaged (L, N, N), token 0 = CLS. Heads and layers are
    averaged, the CLS row and column dropped, then Sinkhorn (`rounds`), symmetrisation (T + T^T) / 2 and the
    matrix power `power` (CLIP-ES t = 2, i.e. T @ T). Computed in float32.
    """
    if attentions.ndim == 4:
        attentions = attentions.float().mean(dim=1)
    elif attentions.ndim != 3:
        raise ValueError(f"attentions must have shape (L, heads, N, N) or (L, N, N), got {tuple(attentions.shape)}")
    num_layers, rows, cols = attentions.shape
    if num_layers == 0 or rows != cols or rows < 2:
        raise ValueError(f"attentions must hold >= 1 layer of square (N, N) maps with N >= 2, got {attentions.shape}")
    return patch_affinity(attentions.float()[:, 1:, 1:].mean(dim=0), rounds=rounds, power=power)


def feature_affinity(tokens: Tensor, *, rounds: int = 3, power: int = 2, beta: float = 8.0) -> Tensor:
    """Affinity (hw, hw) from the tokens (L, N, D) of the chosen layers, token 0 = CLS (dropped): the cosine
    similarity of patch tokens, clamped at 0 and averaged over the layers, to the Hadamard power `beta`
    (AffinityNet's 8: it sharpens the walk to near-identical patches), then as `attention_affinity`."""
    if tokens.ndim != 3 or tokens.shape[0] == 0 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must have shape (L >= 1, N >= 2, D), got {tuple(tokens.shape)}")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    patches = F.normalize(tokens.float()[:, 1:], dim=-1)
    similarity = (patches @ patches.transpose(1, 2)).clamp_min(0).mean(dim=0)
    # A patch's similarity to itself is 1, so no row or column is all zero and Sinkhorn is defined.
    return patch_affinity(similarity**beta, rounds=rounds, power=power)


def patch_affinity(matrix: Tensor, *, rounds: int = 3, power: int = 2) -> Tensor:
    """CAA's transition matrix from a non-negative patch-to-patch matrix (hw, hw): Sinkhorn (`rounds`),
    symmetrisation (T + T^T) / 2, matrix power `power`."""
    if power < 0:
        raise ValueError(f"power must be >= 0, got {power}")
    transition = sinkhorn_normalize(matrix, rounds)
    transition = (transition + transition.T) / 2
    return torch.linalg.matrix_power(transition, power)


AFFINITY_SOURCES = ("attention", "features")


class AffinitySettings(Protocol):
    """The CAA settings `trace_affinity` reads (`ClipEsSettings`, `LearnedCamSettings`)."""

    affinity_source: str
    sinkhorn_rounds: int
    affinity_power: int
    feature_power: float


def check_affinity_source(source: str) -> None:
    if source not in AFFINITY_SOURCES:
        raise ValueError(f"affinity_source must be one of {AFFINITY_SOURCES}, got {source!r}")


def trace_affinity(blocks: Sequence[BlockTrace], settings: AffinitySettings) -> Tensor:
    """CAA affinity of one image (batch item 0) from the traces of the chosen blocks: their attention maps
    (`affinity_source="attention"`, CLIP-ES) or their ln_1 tokens (`"features"`, see the module docstring)."""
    check_affinity_source(settings.affinity_source)
    rounds, power = settings.sinkhorn_rounds, settings.affinity_power
    if settings.affinity_source == "attention":
        attentions = torch.stack([block.attention[0] for block in blocks]).detach()
        return attention_affinity(attentions.float(), rounds=rounds, power=power)
    tokens = torch.stack([block.ln_1[0] for block in blocks]).detach()
    return feature_affinity(tokens, rounds=rounds, power=power, beta=settings.feature_power)


def _binarize(maps: Tensor, threshold: float, reference_quirks: bool) -> Tensor:
    """Foreground (P, h, w): strictly above threshold * per-map max (cv2.THRESH_BINARY is strict too)."""
    if not reference_quirks:
        return maps > threshold * maps.amax(dim=(-2, -1), keepdim=True)
    # CLIP-ES binarises an 8-bit copy: floor(map * 255) > int(threshold * max of that copy).
    if maps.numel() and (maps.min() < 0 or maps.max() > 1):
        raise ValueError("reference_quirks needs maps in [0, 1]: CLIP-ES casts map * 255 to uint8")
    quantized = torch.floor(maps.float() * 255)
    cut = torch.floor(threshold * quantized.amax(dim=(-2, -1), keepdim=True).double()).float()
    return quantized > cut


def _component_labels(foreground: Tensor) -> Tensor:
    """8-connected component labels (P, h, w): 0 off the foreground, else an id shared by one component.

    Each foreground pixel starts with its own id; repeated 3x3 max-pooling inside the foreground spreads the
    largest id through each component, which takes as many steps as the component's longest geodesic path.
    """
    num_maps, height, width = foreground.shape
    ids = torch.arange(1, height * width + 1, device=foreground.device, dtype=torch.float32)
    mask = foreground.unsqueeze(1).float()  # (P, 1, h, w); ids are exact in float32 up to 2**24 pixels
    labels = ids.reshape(1, 1, height, width) * mask
    while True:
        spread = F.max_pool2d(labels, kernel_size=3, stride=1, padding=1) * mask
        if torch.equal(spread, labels):
            return labels.squeeze(1).long()
        labels = spread


def box_mask(cam: Tensor, threshold: float, *, reference_quirks: bool = False) -> Tensor:
    """Union of the bounding boxes of the 8-connected regions where `cam` > threshold * max(cam).

    `cam` is (h, w) or a stack (P, h, w) (one mask per map). An all-zero map gives an empty mask, as in CLIP-ES
    (no contour, no box). CLIP-ES finds the regions with cv2 contours; outer contours are exactly the 8-connected
    components, and hole contours lie inside their component's box, so the union is the same.

    reference_quirks=True reproduces two details of CLIP-ES's `scoremap2bbox` + box painting: the map is
    quantised to 8 bits before thresholding (needs values in [0, 1]), and box ends are clipped to w-1 / h-1
    before being used as exclusive slice ends, so a box touching the right or bottom border loses that last
    column or row. The default is the plain definition above.
    """
    if cam.ndim not in (2, 3):
        raise ValueError(f"cam must have shape (h, w) or (P, h, w), got {tuple(cam.shape)}")
    maps = cam.unsqueeze(0) if cam.ndim == 2 else cam
    num_maps, height, width = maps.shape
    foreground = _binarize(maps, threshold, reference_quirks)
    labels = _component_labels(foreground).reshape(num_maps, height * width)

    # Box extent of every (map, component id) pair via scatter min/max of pixel rows and columns.
    slots = height * width + 1
    keys = (labels + torch.arange(num_maps, device=cam.device).unsqueeze(1) * slots).reshape(-1)
    rows = torch.arange(height, device=cam.device).repeat_interleave(width).repeat(num_maps)
    cols = torch.arange(width, device=cam.device).repeat(height * num_maps)
    big = max(height, width)
    top = torch.full((num_maps * slots,), big, device=cam.device).scatter_reduce(0, keys, rows, "amin")
    bottom = torch.full((num_maps * slots,), -1, device=cam.device).scatter_reduce(0, keys, rows, "amax")
    left = torch.full((num_maps * slots,), big, device=cam.device).scatter_reduce(0, keys, cols, "amin")
    right = torch.full((num_maps * slots,), -1, device=cam.device).scatter_reduce(0, keys, cols, "amax")

    slot_ids = torch.arange(num_maps * slots, device=cam.device)
    present = (bottom >= 0) & (slot_ids % slots != 0)  # id 0 is the non-foreground "component"
    top, bottom, left, right, owner = (t[present] for t in (top, bottom, left, right, slot_ids // slots))
    if reference_quirks:
        bottom, right = bottom.clamp_max(height - 2), right.clamp_max(width - 2)

    row_range = torch.arange(height, device=cam.device)
    col_range = torch.arange(width, device=cam.device)
    in_rows = (row_range >= top[:, None]) & (row_range <= bottom[:, None])  # (boxes, h)
    in_cols = (col_range >= left[:, None]) & (col_range <= right[:, None])  # (boxes, w)
    boxes = (in_rows[:, :, None] & in_cols[:, None, :]).float()
    union = torch.zeros((num_maps, height, width), device=cam.device).index_add_(0, owner, boxes) > 0
    return union if cam.ndim == 3 else union.squeeze(0)


def caa_refine(
    cams: Tensor,
    affinity: Tensor,
    *,
    box_threshold: float = 0.4,
    box_source: Tensor | None = None,
    normalize: bool = True,
    reference_quirks: bool = False,
) -> Tensor:
    """Refine CAMs (P, h, w) with an affinity (hw, hw) from `attention_affinity`; returns (P, h, w) float32.

    For each map c: M_c = box_mask(box_source_c, box_threshold); refined_c = (T * M_c[columns]) @ vec(cam_c),
    i.e. T @ (M_c * cam_c), then min-max per map when `normalize` (CLIP-ES). Column masking after the matrix
    power follows the CLIP-ES and FMA-WSSS code (their CAA masks the columns of T).

    CLIP-ES: box from and applied to the min-maxed CAM, threshold 0.4 VOC / 0.7 COCO. FMA-WSSS's seg variant
    applies it to the raw CAM (`cams`) with boxes from the normalised score (`box_source`), threshold 0.5, and
    leaves the result unnormalised (`normalize=False`). `reference_quirks` is passed to `box_mask`.
    """
    if cams.ndim != 3:
        raise ValueError(f"cams must have shape (P, h, w), got {tuple(cams.shape)}")
    num_maps, height, width = cams.shape
    if affinity.shape != (height * width, height * width):
        raise ValueError(f"affinity shape {tuple(affinity.shape)} does not match the {height}x{width} CAM grid")
    source = cams if box_source is None else box_source
    if source.shape != cams.shape:
        raise ValueError(f"box_source shape {tuple(source.shape)} differs from cams shape {tuple(cams.shape)}")
    masks = box_mask(source, box_threshold, reference_quirks=reference_quirks)
    masked = cams.float().reshape(num_maps, height * width) * masks.reshape(num_maps, height * width)
    refined = (masked @ affinity.float().T).reshape(num_maps, height, width)  # row i: sum_j T[i, j] m_j cam_j
    return minmax(refined, (-2, -1)) if normalize else refined
