"""A classical mask generator for machines without SAM weights: Felzenszwalb-Huttenlocher over-segmentation.

Felzenszwalb & Huttenlocher, "Efficient Graph-Based Image Segmentation" (IJCV 2004): pixels are graph nodes joined
to their 8 neighbours by edges weighted with the colour distance; edges are visited by increasing weight, and the
two components an edge joins are merged when its weight is no larger than either component's internal difference
(its largest merged edge) plus k / |component|. Small components are then merged into a neighbour.

Three values of k, from small to large, give the subpart, part and whole levels; every segment of every level
becomes a mask record of the same schema as SAM's, and the FMA-WSSS occupation filter picks the quasi-superpixels.
A segmentation has no confidence: predicted_iou and stability_score are a constant 1.0 stand-in, point_coords the
segment's first pixel in raster order, crop_box the whole image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from wsss_core.masks.occupation import occupation_filter, partition_intersections
from wsss_core.masks.rle import encode_coco, runs_from_labels

STAND_IN_CONFIDENCE = 1.0


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 2:
        image = image[..., None]
    if sigma <= 0:
        return image
    # The reference convolves with a Gaussian cut at 4 sigma and repeats the border pixels.
    return ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0)


def sorted_edges(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 8-neighbour grid graph of an (H, W, C) float image: endpoints (raster indices) and colour distances,
    sorted by weight (ties in a fixed order, so the segmentation is deterministic)."""
    height, width = image.shape[:2]
    index = np.arange(height * width).reshape(height, width)
    pairs = (
        (index[:, :-1], index[:, 1:]),  # right
        (index[:-1, :], index[1:, :]),  # down
        (index[:-1, :-1], index[1:, 1:]),  # down-right
        (index[1:, :-1], index[:-1, 1:]),  # up-right
    )
    a = np.concatenate([first.ravel() for first, _ in pairs])
    b = np.concatenate([second.ravel() for _, second in pairs])
    pixels = image.reshape(height * width, -1)
    weights = np.sqrt(((pixels[a] - pixels[b]) ** 2).sum(axis=1))
    order = np.argsort(weights, kind="stable")
    return a[order], b[order], weights[order]


def _roots(parent: list[int]) -> np.ndarray:
    roots = np.asarray(parent)
    while True:
        up = roots[roots]
        if np.array_equal(up, roots):
            return roots
        roots = up


def segment_graph(
    n_pixels: int, a: np.ndarray, b: np.ndarray, weights: np.ndarray, k: float, min_size: int
) -> np.ndarray:
    """(n_pixels,) component root of every pixel, for edges already sorted by weight."""
    parent = list(range(n_pixels))
    size = [1] * n_pixels
    threshold = [float(k)] * n_pixels  # internal difference (0 for one pixel) + k / size
    # Plain lists and inlined find-with-path-halving: this loop is the whole cost of the method.
    for x, y, w in zip(a.tolist(), b.tolist(), weights.tolist(), strict=True):
        while parent[x] != x:
            parent[x] = x = parent[parent[x]]
        while parent[y] != y:
            parent[y] = y = parent[parent[y]]
        if x != y and w <= threshold[x] and w <= threshold[y]:
            if size[x] < size[y]:
                x, y = y, x
            parent[y] = x
            size[x] += size[y]
            threshold[x] = w + k / size[x]

    # Components below min_size join a neighbour, edges again by increasing weight. Only edges between two
    # components of which one is still small can ever merge (sizes only grow), so the rest are skipped.
    roots = _roots(parent)
    sizes = np.asarray(size)
    small = sizes[roots] < min_size
    candidate = (roots[a] != roots[b]) & (small[a] | small[b])
    for x, y in zip(a[candidate].tolist(), b[candidate].tolist(), strict=True):
        while parent[x] != x:
            parent[x] = x = parent[parent[x]]
        while parent[y] != y:
            parent[y] = y = parent[parent[y]]
        if x != y and (size[x] < min_size or size[y] < min_size):
            if size[x] < size[y]:
                x, y = y, x
            parent[y] = x
            size[x] += size[y]
    return _roots(parent)


def _consecutive(roots: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Labels 0..S-1 numbered by each segment's first pixel in raster order."""
    _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int32)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first), dtype=np.int32)
    return rank[inverse].reshape(shape)


def felzenszwalb_levels(
    image: np.ndarray, scales: Sequence[float], sigma: float = 0.8, min_size: int = 20
) -> list[np.ndarray]:
    """One (H, W) int32 label map per k in `scales`, for an (H, W, 3) image with values 0..255.

    k is in the reference implementation's units (pixel values 0..255): larger k, larger segments.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    if min_size < 1 or sigma < 0 or any(k < 0 for k in scales):
        raise ValueError(f"need k >= 0, sigma >= 0 and min_size >= 1; got {list(scales)}, {sigma}, {min_size}")
    smooth = _smooth(image, sigma)
    a, b, weights = sorted_edges(smooth)
    shape = image.shape[:2]
    return [_consecutive(segment_graph(shape[0] * shape[1], a, b, weights, k, min_size), shape) for k in scales]


def felzenszwalb(image: np.ndarray, k: float, sigma: float = 0.8, min_size: int = 20) -> np.ndarray:
    """(H, W) int32 labels of the Felzenszwalb-Huttenlocher segmentation with scale `k`."""
    return felzenszwalb_levels(image, [k], sigma, min_size)[0]


class FelzenszwalbGenerator:
    """Mask records (SAM's schema + level, kept) from Felzenszwalb segmentations at three scales.

    Arguments:
      scales: k of the subpart, part and whole level, increasing.
      sigma: Gaussian smoothing before segmentation.
      min_size: smallest segment, in pixels.
      t_r: occupation threshold of the quasi-superpixel filter; None keeps every segment.
    """

    def __init__(self, scales: Sequence[float], sigma: float = 0.8, min_size: int = 20, t_r: float | None = 0.3):
        if len(scales) != 3:
            raise ValueError(f"scales must give k for the subpart, part and whole level, got {list(scales)}")
        self.scales, self.sigma, self.min_size, self.t_r = [float(k) for k in scales], sigma, min_size, t_r

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """One record per segment of each level, whole level first."""
        from scipy import ndimage

        label_maps = felzenszwalb_levels(image, self.scales, self.sigma, self.min_size)
        height, width = label_maps[0].shape
        intersections, offsets = partition_intersections(label_maps)
        levels = np.repeat(np.arange(3), np.diff(offsets))
        areas = np.concatenate([np.bincount(m.ravel()) for m in label_maps])
        kept = occupation_filter(levels, areas, intersections, self.t_r) if self.t_r is not None else areas > 0

        records = []
        for level in (2, 1, 0):
            labels = label_maps[level]
            strings = encode_coco(runs_from_labels(labels))
            _, first_pixel = np.unique(labels.ravel(), return_index=True)
            for segment, box in enumerate(ndimage.find_objects(labels + 1)):
                number = offsets[level] + segment
                y, x = divmod(int(first_pixel[segment]), width)
                records.append(
                    {
                        "segmentation": {"size": [height, width], "counts": strings[segment]},
                        "area": int(areas[number]),
                        # XYWH with the last row/column inclusive, as SAM computes its boxes
                        "bbox": [
                            box[1].start,
                            box[0].start,
                            box[1].stop - 1 - box[1].start,
                            box[0].stop - 1 - box[0].start,
                        ],
                        "predicted_iou": STAND_IN_CONFIDENCE,
                        "stability_score": STAND_IN_CONFIDENCE,
                        "point_coords": [[float(x), float(y)]],
                        "crop_box": [0, 0, width, height],
                        "level": level,
                        "kept": bool(kept[number]),
                    }
                )
        return records
