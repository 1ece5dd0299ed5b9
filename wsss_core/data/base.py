"""Dataset records, image and mask readers, and the one-pass validator that every loader shares.

A dataset is a plain frozen record: which images a split holds, where their ground-truth masks are (if any)
and which classes each image contains. Loaders only find files and labels; pixels are read on demand with
`read_image` / `read_mask`, so a 80k-image split costs nothing to describe.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class DatasetError(ValueError):
    """Data on disk is missing, malformed or inconsistent; the message names the file (or split, key) and problem."""


@dataclass(frozen=True)
class Sample:
    """One image of a split.

    Arguments:
      image_id: the file stem that names the image in split lists, e.g. "2007_000032".
      image_path: the image file.
      mask_path: the ground-truth class-index PNG, or None when the split has no ground truth (e.g. VOC test).
      labels: image-level labels: sorted, distinct foreground class indices in 1..C (background 0 is never listed).
    """

    image_id: str
    image_path: Path
    mask_path: Path | None
    labels: tuple[int, ...]

    def __post_init__(self) -> None:
        # Normalise so that equal samples compare equal whatever types the caller built them from.
        object.__setattr__(self, "image_path", Path(self.image_path))
        if self.mask_path is not None:
            object.__setattr__(self, "mask_path", Path(self.mask_path))
        object.__setattr__(self, "labels", tuple(sorted({int(label) for label in self.labels})))


@dataclass(frozen=True, repr=False)
class Dataset:
    """The samples of one split of a dataset.

    Arguments:
      name: registry key of the loader that built it: "voc", "coco", "folder" or "synthetic".
      root: the dataset folder; index tables store sample paths relative to it.
      split: the split name, e.g. "train_aug", "val".
      class_names: index 0 is "background", 1..C the foreground classes.
      samples: the split's samples in split-list order.
      label_source: where the image-level labels came from: "gt_masks", "xml", "csv" or "none".
    """

    name: str
    root: Path
    split: str
    class_names: tuple[str, ...]
    samples: tuple[Sample, ...]
    label_source: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "samples", tuple(self.samples))

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, split={self.split!r}, root={str(self.root)!r}, samples={len(self)}, "
            f"num_classes={self.num_classes}, label_source={self.label_source!r})"
        )


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as an HxWx3 uint8 RGB array (greyscale, palette and RGBA images are converted).

    EXIF orientation is deliberately not applied: the ground-truth masks are aligned with the stored pixel grid.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file does not exist") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"{path}: cannot read image ({error})") from error


def read_mask(path: str | Path) -> np.ndarray:
    """Read a class-index mask as an HxW uint8 array: palette PNG indices or greyscale values, not colours."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.mode in ("P", "L"):
                return np.array(image, dtype=np.uint8)
            if image.mode in ("I", "I;16", "I;16B", "I;16L"):
                values = np.array(image)
                if values.size and (values.min() < 0 or values.max() > 255):
                    raise DatasetError(f"{path}: mask values must lie in 0..255, found {values.min()}..{values.max()}")
                return values.astype(np.uint8)
            raise DatasetError(
                f"{path}: a mask must be a palette (P) or greyscale (L) image of class indices, got mode {image.mode}"
            )
    except FileNotFoundError:
        raise DatasetError(f"{path}: mask file does not exist") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        if isinstance(error, DatasetError):
            raise
        raise DatasetError(f"{path}: cannot read mask ({error})") from error


def mask_labels(mask: np.ndarray, num_classes: int, path: str | Path) -> tuple[int, ...]:
    """Foreground classes present in a class-index mask; values outside 0..C other than 255 raise naming `path`."""
    counts = np.bincount(mask.ravel(), minlength=256)
    present = np.flatnonzero(counts)
    invalid = [int(value) for value in present if value >= num_classes and value != IGNORE_INDEX]
    if invalid:
        raise DatasetError(
            f"{path}: mask values {invalid} are outside the class range 0..{num_classes - 1} (255 = ignore)"
        )
    return tuple(int(value) for value in present if 0 < value < num_classes)


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """Read a classes.txt (one foreground class name per line) and return ("background", *names)."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise DatasetError(f"{path}: class list does not exist (one foreground class name per line)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read class list ({error})") from error
    names = [name for name in names if name]
    if not names:
        raise DatasetError(f"{path}: class list is empty")
    if "background" in names:
        raise DatasetError(f"{path}: do not list 'background'; it is the implicit class 0")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DatasetError(f"{path}: class names listed more than once: {duplicates}")
    return ("background", *names)


def read_split_list(path: str | Path) -> list[str]:
    """Image ids of a split list, one per line; empty lists raise.

    Only the first token of a line counts: CLIP-ES's COCO lists append class indices ("COCO_train2014_..._9 45 49"),
    and DeepLab-style lists name files ("/JPEGImages/x.jpg /SegmentationClassAug/x.png"), whose stem is the id.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(f"{path}: split list does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read split list ({error})") from error
    image_ids = []
    for line in lines:
        tokens = line.split()
        if not tokens:
            continue
        first = PurePosixPath(tokens[0])
        image_ids.append(first.stem if first.suffix.lower() in IMAGE_SUFFIXES else first.name)
    if not image_ids:
        raise DatasetError(f"{path}: split list is empty")
    return image_ids


def find_first(candidates: list[Path], what: str) -> Path:
    """The first existing path of `candidates`; raise naming all of them when none exists."""
    for candidate in candidates:
        if candidate.exists():
            return candidate
    tried = ", ".join(str(candidate) for candidate in candidates)
    raise DatasetError(f"no {what} found; looked for: {tried}")


def split_mask_paths(mask_paths: list[Path | None]) -> list[Path | None]:
    """Decide whether a split has ground truth: all masks present, or none (a test split). A partial set raises."""
    present = [path for path in mask_paths if path is not None and path.is_file()]
    if not present:
        return [None] * len(mask_paths)
    for path in mask_paths:
        if path is None or not path.is_file():
            raise DatasetError(
                f"{path}: mask file does not exist, although {len(present)} of the split's {len(mask_paths)} "
                "images have one"
            )
    return list(mask_paths)


def validate_dataset(ds: Dataset) -> None:
    """Read every image and mask once and raise DatasetError on the first problem found.

    Checks: the split is not empty; image ids are unique; image-level labels lie in 1..C; every image exists and
    decodes; every mask decodes, has the image's size, and holds only values in 0..C or 255.
    """
    if len(ds) == 0:
        raise DatasetError(f"{ds.root}: split '{ds.split}' of dataset '{ds.name}' is empty")
    first_position: dict[str, int] = {}
    for position, sample in enumerate(ds):
        if sample.image_id in first_position:
            raise DatasetError(
                f"{ds.root}: split '{ds.split}' lists image id '{sample.image_id}' twice "
                f"(positions {first_position[sample.image_id]} and {position})"
            )
        first_position[sample.image_id] = position
    last_class = ds.num_classes - 1
    for sample in ds:
        bad_labels = [label for label in sample.labels if not 1 <= label <= last_class]
        if bad_labels:
            raise DatasetError(
                f"{sample.image_path}: image-level labels {bad_labels} of '{sample.image_id}' "
                f"are outside 1..{last_class}"
            )
        height, width = read_image(sample.image_path).shape[:2]
        if sample.mask_path is None:
            continue
        mask = read_mask(sample.mask_path)
        if mask.shape != (height, width):
            raise DatasetError(
                f"{sample.mask_path}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image "
                f"{sample.image_path} is {height}x{width}"
            )
        mask_labels(mask, ds.num_classes, sample.mask_path)
