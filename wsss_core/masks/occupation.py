"""FMA-WSSS's quasi-superpixel filter: whole masks first, then parts, then subparts, each only where still free.

Levels are visited whole -> part -> subpart. Every whole mask is kept. A mask of a later level is kept only if no
mask kept so far occupies t_r or more of it: max over kept K of |m & K| / |m| < t_r. Masks of one level are judged
against the masks kept at earlier levels only, never against each other, so the kept set grows level by level.
(FMA-WSSS section 4.2, change 3; t_r = 0.3.) Empty masks are dropped: they cover nothing a seed could use.

The rule needs only mask areas and pairwise intersection areas, given by a function, so that SAM's dense masks and
an over-segmentation's label maps share it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Intersections = Callable[[np.ndarray, np.ndarray], np.ndarray]


def occupation_filter(levels: np.ndarray, areas: np.ndarray, intersections: Intersections, t_r: float) -> np.ndarray:
    """(M,) bool: which masks are quasi-superpixels.

    Arguments:
      levels: (M,) 0 subpart, 1 part, 2 whole.
      areas: (M,) pixels per mask.
      intersections: f(rows, cols) -> (len(rows), len(cols)) pixel counts of |mask_row & mask_col|.
      t_r: occupation threshold; a mask occupied t_r or more by a kept one is dropped.
    """
    levels, areas = np.asarray(levels), np.asarray(areas)
    if levels.shape != areas.shape or levels.ndim != 1:
        raise ValueError(f"levels {levels.shape} and areas {areas.shape} must be matching 1-D arrays")
    if not 0.0 <= t_r <= 1.0:
        raise ValueError(f"t_r must lie in [0, 1], got {t_r}")
    keep = np.zeros(len(levels), dtype=bool)
    kept = np.zeros(0, dtype=np.int64)
    for level in (2, 1, 0):
        candidates = np.flatnonzero((levels == level) & (areas > 0))
        if len(candidates) and len(kept):
            occupied = np.asarray(intersections(candidates, kept)).max(axis=1) / areas[candidates]
            candidates = candidates[occupied < t_r]
        keep[candidates] = True
        kept = np.concatenate((kept, candidates))
    return keep


def dense_intersections(masks, device=None, chunk: int = 64) -> Intersections:
    """Intersections of (M, H, W) boolean masks (numpy or torch) by matrix products on `device`.

    Products of 0/1 values summed in float32 are exact below 2**24 pixels; larger images use float64.
    """
    import torch

    flat = torch.as_tensor(np.asarray(masks) if isinstance(masks, np.ndarray) else masks, device=device)
    flat = flat.reshape(flat.shape[0], -1)
    dtype = torch.float32 if flat.shape[1] < 2**24 else torch.float64

    def intersections(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        right = flat[torch.as_tensor(cols, device=flat.device)].to(dtype).T
        blocks = []
        for start in range(0, len(rows), chunk):
            left = flat[torch.as_tensor(rows[start : start + chunk], device=flat.device)].to(dtype)
            blocks.append((left @ right).round().to(torch.int64).cpu())
        return torch.cat(blocks).numpy()

    return intersections


def partition_intersections(label_maps: Sequence[np.ndarray]) -> tuple[Intersections, np.ndarray]:
    """Intersections of the segments of several partitions of one image (e.g. one label map per level).

    Segment j of label map L gets the global mask number offsets[L] + j. Returns the function and offsets.
    """
    labels = [np.asarray(m).ravel() for m in label_maps]
    counts = [int(m.max()) + 1 if m.size else 0 for m in labels]
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    owner = np.repeat(np.arange(len(labels)), counts)
    tables: dict[tuple[int, int], np.ndarray] = {}

    def table(a: int, b: int) -> np.ndarray:
        if (a, b) not in tables:
            joint = np.bincount(labels[a].astype(np.int64) * counts[b] + labels[b], minlength=counts[a] * counts[b])
            tables[(a, b)] = joint.reshape(counts[a], counts[b])
        return tables[(a, b)]

    def intersections(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        rows, cols = np.asarray(rows), np.asarray(cols)
        result = np.zeros((len(rows), len(cols)), dtype=np.int64)
        for a in np.unique(owner[rows]):
            for b in np.unique(owner[cols]):
                r, c = np.flatnonzero(owner[rows] == a), np.flatnonzero(owner[cols] == b)
                result[np.ix_(r, c)] = table(a, b)[np.ix_(rows[r] - offsets[a], cols[c] - offsets[b])]
        return result

    return intersections, offsets
