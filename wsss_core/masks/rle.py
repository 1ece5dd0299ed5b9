"""Run-length forms of binary masks: COCO's compressed RLE strings, and the runs SAMS computes on.

SAM writes each mask as a COCO RLE: the lengths of alternating background / foreground runs over the pixels in
column-major order (x outer, y inner), compressed by pycocotools into a short ASCII string. Decoding those strings
to dense (H, W) maps costs several times what SAMS does with them, so this module decodes them straight into
`MaskRuns` -- the start and length of every foreground run -- with array operations over all masks of an image at
once. Sums over a mask then cost one look-up per run in a prefix sum, not one per pixel.

The string format (pycocotools maskApi.c, rleToString): each count is written in 5-bit groups, least significant
first, as characters 48 + group, with 0x20 set on all groups but the last, and the last group's 0x10 bit giving the
sign; from the fourth count on (index > 2) the difference to the count two places earlier is written instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class RleError(ValueError):
    """A run-length encoding that does not describe a mask of its stated size."""


@dataclass(frozen=True)
class MaskRuns:
    """The foreground runs of M masks of one (H, W) image, in column-major pixel order.

    Arguments:
      size: (height, width) of the image.
      starts: (R,) int64 column-major index (x * H + y) of each run's first pixel.
      lengths: (R,) int64 pixels in each run (all > 0).
      offsets: (M + 1,) int64; the runs of mask i are starts[offsets[i]:offsets[i + 1]], in increasing order.
    """

    size: tuple[int, int]
    starts: np.ndarray
    lengths: np.ndarray
    offsets: np.ndarray

    @property
    def n_masks(self) -> int:
        return len(self.offsets) - 1

    def mask_of_run(self) -> np.ndarray:
        """(R,) index of the mask each run belongs to."""
        return np.repeat(np.arange(self.n_masks), np.diff(self.offsets))

    def areas(self) -> np.ndarray:
        """(M,) int64 pixels per mask (0 for an empty mask)."""
        before = np.concatenate(([0], np.cumsum(self.lengths)))
        return before[self.offsets[1:]] - before[self.offsets[:-1]]

    def pixels(self) -> np.ndarray:
        """Column-major index of every foreground pixel, run after run (a pixel appears once per mask covering it)."""
        if len(self.lengths) == 0:
            return np.zeros(0, dtype=np.int64)
        # One cumulative sum builds every run's index range: +1 inside a run, a jump at each run's first pixel.
        steps = np.ones(int(self.lengths.sum()), dtype=np.int64)
        firsts = np.cumsum(self.lengths)[:-1]
        steps[0] = self.starts[0]
        steps[firsts] = self.starts[1:] - (self.starts[:-1] + self.lengths[:-1]) + 1
        return np.cumsum(steps)

    def select(self, keep: np.ndarray) -> MaskRuns:
        """The masks where the boolean (M,) `keep` is true, in their order."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (self.n_masks,):
            raise ValueError(f"keep has shape {keep.shape}, expected ({self.n_masks},)")
        run_keep = np.repeat(keep, np.diff(self.offsets))
        counts = np.diff(self.offsets)[keep]
        return MaskRuns(
            self.size,
            self.starts[run_keep],
            self.lengths[run_keep],
            np.concatenate(([0], np.cumsum(counts))).astype(np.int64),
        )

    def to_dense(self) -> np.ndarray:
        """(M, H, W) bool masks (a transposed view of a column-major buffer, as pycocotools returns them)."""
        height, width = self.size
        flat = np.zeros((self.n_masks, width * height), dtype=bool)
        flat[np.repeat(self.mask_of_run(), self.lengths), self.pixels()] = True
        return flat.reshape(self.n_masks, width, height).transpose(0, 2, 1)


def empty_runs(size: tuple[int, int]) -> MaskRuns:
    """No masks at all on an image of `size`."""
    return MaskRuns((int(size[0]), int(size[1])), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(1, np.int64))


def runs_from_dense(masks: np.ndarray) -> MaskRuns:
    """Runs of (M, H, W) boolean masks."""
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.dtype != bool:
        raise ValueError(f"masks must be a (M, H, W) bool array, got {masks.dtype} {masks.shape}")
    n, height, width = masks.shape
    flat = masks.transpose(0, 2, 1).reshape(n, width * height).view(np.int8)
    edges = np.diff(flat, axis=1, prepend=np.int8(0), append=np.int8(0))  # +1 where a run starts, -1 after it
    changes = np.flatnonzero(edges)  # grouped by mask, increasing within a mask: starts and ends alternate
    mask_index, starts = np.divmod(changes[0::2], width * height + 1)
    ends = changes[1::2] % (width * height + 1)
    offsets = np.concatenate(([0], np.cumsum(np.bincount(mask_index, minlength=n))))
    return MaskRuns((height, width), starts.astype(np.int64), (ends - starts).astype(np.int64), offsets)


def _segment_cumsum(values: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting wherever the (sorted) `segment` label changes."""
    if len(values) == 0:
        return values
    total = np.cumsum(values)
    firsts = np.flatnonzero(np.concatenate(([True], segment[1:] != segment[:-1])))
    base = np.repeat(total[firsts] - values[firsts], np.diff(np.concatenate((firsts, [len(values)]))))
    return total - base


def decode_coco_counts(strings: Sequence[bytes], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Uncompressed COCO run lengths of several compressed strings of one image.

    Returns (counts, offsets): the counts of string i are counts[offsets[i]:offsets[i + 1]], alternating background
    and foreground runs starting with background, summing to H * W.
    """
    height, width = (int(v) for v in size)
    n = len(strings)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(1, np.int64)
    string_lengths = np.fromiter((len(s) for s in strings), dtype=np.int64, count=n)
    if string_lengths.min() == 0:
        raise RleError(f"RLE string {int(np.argmin(string_lengths))} is empty")
    chars = np.frombuffer(b"".join(strings), dtype=np.uint8).astype(np.int64) - 48
    if chars.size and (chars.min() < 0 or chars.max() > 63):
        raise RleError("RLE strings hold characters outside the COCO alphabet (ASCII 48-111)")
    more = (chars & 0x20) != 0
    string_ends = np.cumsum(string_lengths) - 1
    if more[string_ends].any():
        raise RleError(f"RLE string {int(np.flatnonzero(more[string_ends])[0])} ends inside a count")

    # Each count is a group of characters ending at one without the continuation bit.
    ends = np.flatnonzero(~more)
    firsts = np.concatenate(([0], ends[:-1] + 1))
    n_chars = ends - firsts + 1
    if n_chars.size and n_chars.max() > 12:
        raise RleError("RLE count longer than 12 characters (corrupt string)")
    position = np.arange(len(chars)) - np.repeat(firsts, n_chars)
    deltas = np.add.reduceat((chars & 0x1F) << (5 * position), firsts)
    negative = (chars[ends] & 0x10) != 0
    deltas[negative] -= np.left_shift(1, 5 * n_chars[negative])

    offsets = np.concatenate(([0], np.searchsorted(ends, string_ends, side="right"))).astype(np.int64)
    mask_of = np.repeat(np.arange(n), np.diff(offsets))
    local = np.arange(len(deltas)) - offsets[mask_of]
    # From index 3 on a count is stored as the difference to the count two places earlier: undo it along the odd
    # indices (from 1) and the even indices from 2, separately within each string.
    counts = deltas.copy()
    for chain in (local % 2 == 1, (local % 2 == 0) & (local >= 2)):
        where = np.flatnonzero(chain)
        counts[where] = _segment_cumsum(deltas[where], mask_of[where])
    if counts.size and counts.min() < 0:
        raise RleError("RLE decodes to a negative run length (corrupt string)")
    totals = np.add.reduceat(counts, offsets[:-1])
    wrong = np.flatnonzero(totals != height * width)
    if wrong.size:
        raise RleError(f"RLE string {int(wrong[0])} covers {int(totals[wrong[0]])} pixels, not {height}x{width}")
    return counts, offsets


def runs_from_coco(strings: Sequence[bytes], size: tuple[int, int]) -> MaskRuns:
    """Runs of the masks given as COCO compressed RLE strings (`counts` of pycocotools' RLE dicts) of one image."""
    counts, offsets = decode_coco_counts(strings, size)
    mask_of = np.repeat(np.arange(len(strings)), np.diff(offsets))
    local = np.arange(len(counts)) - offsets[mask_of]
    start = _segment_cumsum(counts, mask_of) - counts  # where each run begins within its mask
    foreground = (local % 2 == 1) & (counts > 0)
    per_mask = np.bincount(mask_of[foreground], minlength=len(strings))
    return MaskRuns(
        (int(size[0]), int(size[1])),
        start[foreground],
        counts[foreground],
        np.concatenate(([0], np.cumsum(per_mask))).astype(np.int64),
    )


def coco_counts(runs: MaskRuns) -> list[list[int]]:
    """Uncompressed COCO counts of each mask (background first), the input pycocotools' frPyObjects takes."""
    height, width = runs.size
    result = []
    for i in range(runs.n_masks):
        starts = runs.starts[runs.offsets[i] : runs.offsets[i + 1]]
        lengths = runs.lengths[runs.offsets[i] : runs.offsets[i + 1]]
        ends = starts + lengths
        gaps = starts - np.concatenate(([0], ends[:-1]))
        counts = np.empty(2 * len(starts) + 1, dtype=np.int64)
        counts[0:-1:2], counts[1::2], counts[-1] = gaps, lengths, height * width - (ends[-1] if len(ends) else 0)
        # pycocotools writes no closing background run when the last pixel is foreground
        result.append(counts[:-1].tolist() if len(counts) > 1 and counts[-1] == 0 else counts.tolist())
    return result


def encode_coco(runs: MaskRuns) -> list[bytes]:
    """COCO compressed RLE strings of each mask, exactly as pycocotools (and SAM's coco_rle output) writes them."""
    from pycocotools import mask as mask_utils

    height, width = runs.size
    return [
        mask_utils.frPyObjects({"counts": counts, "size": [height, width]}, height, width)["counts"]
        for counts in coco_counts(runs)
    ]


def runs_from_labels(labels: np.ndarray) -> MaskRuns:
    """Runs of the segments of a label map (H, W) with labels 0..S-1: mask s is the segment labelled s."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    height, width = labels.shape
    flat = labels.T.ravel().astype(np.int64)  # column-major, as COCO counts run
    n_segments = int(flat.max()) + 1 if flat.size else 0
    if flat.size and flat.min() < 0:
        raise ValueError("labels must be >= 0")
    firsts = np.flatnonzero(np.concatenate(([True], flat[1:] != flat[:-1])))
    lengths = np.diff(np.concatenate((firsts, [flat.size])))
    owner = flat[firsts]
    order = np.argsort(owner, kind="stable")  # group runs by segment, keeping each segment's runs in pixel order
    offsets = np.concatenate(([0], np.cumsum(np.bincount(owner, minlength=n_segments))))
    return MaskRuns((height, width), firsts[order].astype(np.int64), lengths[order].astype(np.int64), offsets)
