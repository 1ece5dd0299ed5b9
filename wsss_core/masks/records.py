"""Mask records: SAM's own output schema in parquet, one row per mask, and their decoded form `ImageMasks`.

A row holds what `SamAutomaticMaskGenerator.generate(output_mode="coco_rle")` returns for one mask --
segmentation (COCO RLE: size and compressed counts), area, bbox (XYWH), predicted_iou, stability_score,
point_coords, crop_box -- plus the image id, the mask's level (0 subpart, 1 part, 2 whole) and `kept` (it is a
quasi-superpixel: it passed the occupation filter).

One split of the sam_masks artifact is a directory:
  provenance.json      stage, params, checkpoint sha256, the dataset index it was computed from
  images.parquet       one row per image: image_id, image_sha256, height, width, part, n_masks, n_kept
  part-00000.parquet   the mask rows of a block of consecutive images, in image order (at most 128 parts)
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wsss_core.masks.rle import MaskRuns, RleError, empty_runs, runs_from_coco, runs_from_dense
from wsss_core.store.seal import without_seal
from wsss_core.store.table import ArtifactError

MASK_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("level", pa.int8(), nullable=False),
        pa.field("kept", pa.bool_(), nullable=False),
        pa.field(
            "segmentation",
            pa.struct([pa.field("size", pa.list_(pa.int32(), 2)), pa.field("counts", pa.binary())]),
            nullable=False,
        ),
        pa.field("area", pa.int64(), nullable=False),
        pa.field("bbox", pa.list_(pa.int32(), 4), nullable=False),
        pa.field("predicted_iou", pa.float32(), nullable=False),
        pa.field("stability_score", pa.float32(), nullable=False),
        pa.field("point_coords", pa.list_(pa.list_(pa.float64(), 2)), nullable=False),
        pa.field("crop_box", pa.list_(pa.int32(), 4), nullable=False),
    ]
)

IMAGES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("part", pa.int32(), nullable=False),
        pa.field("n_masks", pa.int32(), nullable=False),
        pa.field("n_kept", pa.int32(), nullable=False),
    ]
)

IMAGES_FILE = "images.parquet"
PROVENANCE_FILE = "provenance.json"


def part_file(part: int) -> str:
    return f"part-{part:05d}.parquet"


class ImageMasks:
    """One image's masks, decoded.

    Arguments:
      masks: (M, H, W) bool maps. Masks read from an artifact are kept as runs and decoded only when this
        attribute is first read (SAMS works on the runs directly).
      level: (M,) int8: 0 subpart, 1 part, 2 whole.
      score: (M,) float32 confidence: SAM's predicted_iou (for Felzenszwalb masks a constant 1.0 stand-in).
      kept: (M,) bool, which masks are quasi-superpixels (all True when read with kept_only).
      runs: the run-length form, instead of `masks`.
    """

    def __init__(
        self,
        masks: np.ndarray | None = None,
        level: np.ndarray | Sequence[int] = (),
        score: np.ndarray | Sequence[float] = (),
        *,
        kept: np.ndarray | Sequence[bool] | None = None,
        runs: MaskRuns | None = None,
    ) -> None:
        if (masks is None) == (runs is None):
            raise ValueError("ImageMasks needs exactly one of masks (M, H, W) or runs")
        if masks is not None:
            masks = np.asarray(masks)
            if masks.ndim != 3 or masks.dtype != bool:
                raise ValueError(f"masks must be a (M, H, W) bool array, got {masks.dtype} {masks.shape}")
        self._masks = masks
        self._runs = runs
        count = len(masks) if masks is not None else runs.n_masks
        self.level = np.asarray(level, dtype=np.int8).reshape(-1)
        self.score = np.asarray(score, dtype=np.float32).reshape(-1)
        self.kept = np.ones(count, dtype=bool) if kept is None else np.asarray(kept, dtype=bool).reshape(-1)
        for name, values in (("level", self.level), ("score", self.score), ("kept", self.kept)):
            if len(values) != count:
                raise ValueError(f"{name} has {len(values)} entries for {count} masks")
        if count and (self.level.min() < 0 or self.level.max() > 2):
            raise ValueError(f"levels must be 0 (subpart), 1 (part) or 2 (whole), got {sorted(set(self.level))}")

    @property
    def masks(self) -> np.ndarray:
        if self._masks is None:
            self._masks = self._runs.to_dense()
        return self._masks

    @property
    def runs(self) -> MaskRuns:
        if self._runs is None:
            self._runs = runs_from_dense(self._masks)
        return self._runs

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the image."""
        return tuple(self._masks.shape[1:]) if self._masks is not None else self._runs.size

    def __len__(self) -> int:
        return len(self.level)

    def areas(self) -> np.ndarray:
        if self._runs is not None:
            return self.runs.areas()
        return self._masks.reshape(len(self), self.size[0] * self.size[1]).sum(axis=1)

    def select(self, keep: np.ndarray) -> ImageMasks:
        """The masks where the boolean `keep` is true."""
        keep = np.asarray(keep, dtype=bool)
        if self._runs is not None:
            return ImageMasks(
                None, self.level[keep], self.score[keep], kept=self.kept[keep], runs=self._runs.select(keep)
            )
        return ImageMasks(self._masks[keep], self.level[keep], self.score[keep], kept=self.kept[keep])

    def __repr__(self) -> str:
        levels = np.bincount(self.level, minlength=3).tolist()
        return f"ImageMasks({len(self)} masks on {self.size[0]}x{self.size[1]}, per level {levels})"


def records_to_table(image_id: str, records: Sequence[dict[str, Any]]) -> pa.Table:
    """Mask records of one image (SAM's coco_rle records with `level` and `kept`) as a MASK_SCHEMA table."""
    columns: dict[str, list] = {name: [] for name in MASK_SCHEMA.names}
    for number, record in enumerate(records):
        missing = [name for name in MASK_SCHEMA.names if name != "image_id" and name not in record]
        if missing:
            raise ValueError(f"image {image_id!r}: mask record {number} lacks {missing}")
        segmentation = record["segmentation"]
        if not isinstance(segmentation, dict) or set(segmentation) != {"size", "counts"}:
            raise ValueError(f"image {image_id!r}: mask {number} segmentation must be a COCO RLE dict (size, counts)")
        counts = segmentation["counts"]
        columns["image_id"].append(image_id)
        columns["segmentation"].append(
            {
                "size": [int(v) for v in segmentation["size"]],
                "counts": counts.encode() if isinstance(counts, str) else counts,
            }
        )
        for name in ("level", "kept", "area", "bbox", "predicted_iou", "stability_score", "point_coords", "crop_box"):
            columns[name].append(record[name])
    return pa.Table.from_pydict(columns, schema=MASK_SCHEMA)


def _image_masks_from_rows(table: pa.Table, size: tuple[int, int], kept_only: bool, where: str) -> ImageMasks:
    kept = table.column("kept").to_numpy(zero_copy_only=False).astype(bool)
    if kept_only:
        table = table.filter(pa.array(kept))
        kept = np.ones(table.num_rows, dtype=bool)
    counts = table.column("segmentation").combine_chunks().field("counts").to_pylist()
    try:
        runs = runs_from_coco(counts, size) if counts else empty_runs(size)
    except RleError as error:
        raise ArtifactError(f"{where}: {error}") from error
    return ImageMasks(
        None,
        table.column("level").to_numpy(zero_copy_only=False),
        table.column("predicted_iou").to_numpy(zero_copy_only=False),
        kept=kept,
        runs=runs,
    )


def _masks_from_table(table: pa.Table, image_id: str, kept_only: bool, size: tuple[int, int] | None) -> ImageMasks:
    import pyarrow.compute as pc

    rows = table.filter(pc.equal(table.column("image_id"), image_id))
    if rows.num_rows:
        stored = tuple(rows.column("segmentation").combine_chunks().field("size")[0].as_py())
        if size is not None and tuple(size) != stored:
            raise ArtifactError(
                f"masks of image {image_id!r} are {stored[0]}x{stored[1]}, expected {size[0]}x{size[1]}"
            )
        size = stored
    elif size is None:
        raise ArtifactError(f"no mask records for image {image_id!r} (pass size= for an image without masks)")
    return _image_masks_from_rows(rows, size, kept_only, f"masks of image {image_id!r}")


class MaskSet:
    """Read access to one split of a sam_masks artifact (the directory described in this module's docstring).

    `read(image_id)` decodes one image; iteration goes part by part, which reads every file once.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        images_path = self.path / IMAGES_FILE
        if not images_path.is_file():
            raise ArtifactError(f"{self.path}: not a mask artifact split (no {IMAGES_FILE}; has sam_masks run?)")
        try:
            images = pq.read_table(images_path)
            self.provenance: dict[str, Any] = without_seal(json.loads((self.path / PROVENANCE_FILE).read_text()))
        except (pa.ArrowInvalid, OSError, json.JSONDecodeError) as error:
            raise ArtifactError(f"{self.path}: unreadable mask artifact ({error})") from error
        self.image_ids: list[str] = images.column("image_id").to_pylist()
        self.image_sha256: list[str] = images.column("image_sha256").to_pylist()
        self.sizes = np.stack([images.column(name).to_numpy() for name in ("height", "width")], axis=1)
        self.parts = images.column("part").to_numpy()
        self.n_masks = images.column("n_masks").to_numpy()
        self._position = {image_id: i for i, image_id in enumerate(self.image_ids)}
        parts, firsts = np.unique(self.parts, return_index=True)  # parts are blocks of consecutive images
        self._part_first = dict(zip(parts.tolist(), firsts.tolist(), strict=True))
        self._cached_part: tuple[int, pa.Table, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def _part(self, part: int) -> tuple[pa.Table, np.ndarray]:
        """The part's rows and, per image of the part (in order), the offset of its first row."""
        if self._cached_part is None or self._cached_part[0] != part:
            path = self.path / part_file(part)
            try:
                table = pq.read_table(path, columns=["level", "kept", "segmentation", "predicted_iou"])
            except (pa.ArrowInvalid, OSError) as error:
                raise ArtifactError(f"{path}: unreadable mask part ({error})") from error
            counts = self.n_masks[self.parts == part]
            if table.num_rows != counts.sum():
                raise ArtifactError(f"{path}: holds {table.num_rows} masks, {IMAGES_FILE} lists {counts.sum()}")
            self._cached_part = (part, table, np.concatenate(([0], np.cumsum(counts))))
        return self._cached_part[1], self._cached_part[2]

    def _read_index(self, index: int, kept_only: bool) -> ImageMasks:
        part = int(self.parts[index])
        table, offsets = self._part(part)
        local = index - self._part_first[part]
        rows = table.slice(offsets[local], offsets[local + 1] - offsets[local])
        size = (int(self.sizes[index, 0]), int(self.sizes[index, 1]))
        return _image_masks_from_rows(rows, size, kept_only, f"{self.path}: image {self.image_ids[index]!r}")

    def read(self, image_id: str, kept_only: bool = True) -> ImageMasks:
        """The masks of `image_id` (only its quasi-superpixels unless kept_only is False)."""
        index = self._position.get(image_id)
        if index is None:
            raise ArtifactError(f"{self.path}: no masks for image {image_id!r}")
        return self._read_index(index, kept_only)

    def __iter__(self) -> Iterator[tuple[str, ImageMasks]]:
        for index, image_id in enumerate(self.image_ids):
            yield image_id, self._read_index(index, kept_only=True)

    def check_images(self, image_ids: Sequence[str], image_sha256: Sequence[str], source: str | Path) -> None:
        """Refuse masks computed for other images: every image listed must be here with the same content hash."""
        for image_id, digest in zip(image_ids, image_sha256, strict=True):
            index = self._position.get(image_id)
            if index is None:
                raise ArtifactError(
                    f"{self.path}: no masks for image {image_id!r} of {source}; these masks were computed for other "
                    f"images (rerun sam_masks, or import the masks of this dataset)"
                )
            if self.image_sha256[index] != digest:
                raise ArtifactError(
                    f"{self.path}: masks of image {image_id!r} were computed for different content (image "
                    f"sha256 {self.image_sha256[index][:12]}..., {source} has {digest[:12]}...); rerun sam_masks "
                    "for this dataset"
                )

    def check_index(self, index_path: str | Path) -> None:
        """`check_images` against a dataset index parquet (prepare stage)."""
        table, _ = read_index_hashes(index_path)
        self.check_images(table["image_id"], table["image_sha256"], index_path)


def read_index_hashes(index_path: str | Path) -> tuple[dict[str, list], dict[str, Any]]:
    """image_id, image_sha256, height, width columns of a dataset index, and its provenance."""
    from wsss_core.store.table import read_table

    table, provenance = read_table(index_path)
    columns = {name: table.column(name).to_pylist() for name in ("image_id", "image_sha256", "height", "width")}
    return columns, provenance


_OPEN_SETS: dict[tuple[str, int], MaskSet] = {}


def _open_set(path: Path) -> MaskSet:
    """A MaskSet per split directory, reused while its images.parquet is unchanged (callers go image by image)."""
    stamp = (path / IMAGES_FILE).stat().st_mtime_ns
    key = (str(path.resolve()), stamp)
    if key not in _OPEN_SETS:
        _OPEN_SETS.clear()
        _OPEN_SETS[key] = MaskSet(path)
    return _OPEN_SETS[key]


def _split_dirs(path: Path) -> list[Path]:
    return sorted(child for child in path.iterdir() if (child / IMAGES_FILE).is_file()) if path.is_dir() else []


def read_image_masks(
    table_or_path: pa.Table | str | Path,
    image_id: str,
    kept_only: bool = True,
    size: tuple[int, int] | None = None,
) -> ImageMasks:
    """The masks of one image, from a MASK_SCHEMA table, a part file, a split directory or the artifact root.

    kept_only: only the quasi-superpixels (what SAMS uses). size: (height, width), needed only to read an image
    without any mask from a bare table (an artifact knows its images' sizes).
    """
    if isinstance(table_or_path, pa.Table):
        return _masks_from_table(table_or_path, image_id, kept_only, size)
    path = Path(table_or_path)
    if (path / IMAGES_FILE).is_file():
        return _open_set(path).read(image_id, kept_only)
    if path.is_file() and path.suffix == ".parquet":
        return _masks_from_table(pq.read_table(path), image_id, kept_only, size)
    splits = _split_dirs(path)
    for split in splits:
        mask_set = _open_set(split)
        if image_id in mask_set._position:
            return mask_set.read(image_id, kept_only)
    if splits:
        raise ArtifactError(f"{path}: no split ({', '.join(s.name for s in splits)}) has masks for {image_id!r}")
    raise ArtifactError(f"{path}: not a mask artifact, split directory or mask parquet file")


def iter_image_masks(path: str | Path) -> Iterator[tuple[str, ImageMasks]]:
    """(image_id, kept masks) of every image of a split directory, in stored order, reading each part once."""
    yield from MaskSet(path)
