"""MS COCO 2014 in the layout that WSSS repositories (CLIP-ES, WeCLIP, ExCEL) use.

Those repositories do not use COCO's JSON annotations: they use semantic-segmentation PNGs rendered from them
("VOC style" labels, the CLIP-ES / WeCLIP Google Drive download), one per image, whose pixel values are class
indices 0..80 in the standard category order (0 = background, 255 = ignore). The folders vary between repositories,
so the loader looks in each known place, in this order ({s} = "train" or "val"):

    images:  JPEGImages/{s}2014/, JPEGImages/{s}/, images/{s}2014/, images/{s}/, {s}2014/, {s}/
    masks:   SegmentationClass/{s}2014/, SegmentationClass/{s}/, SegmentationClass/
             named {image_id}.png, or by the 12-digit number alone (WeCLIP: "000000000009.png")
    split:   {split}.txt, ImageSets/{split}.txt, ImageSets/Segmentation/{split}.txt

Split lists hold one image id per line ("COCO_train2014_000000000009"); trailing tokens (CLIP-ES appends class
indices) are ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsss_core.data.base import (
    Dataset,
    DatasetError,
    Sample,
    find_first,
    mask_labels,
    read_mask,
    read_split_list,
    split_mask_paths,
)

# The 80 category ids of COCO's instance annotations, in class order: class k (1..80) is COCO_CATEGORY_IDS[k - 1].
COCO_CATEGORY_IDS: tuple[int, ...] = (
    *range(1, 12),
    *range(13, 26),
    27,
    28,
    *range(31, 45),
    *range(46, 66),
    67,
    70,
    *range(72, 83),
    *range(84, 91),
)

COCO_CLASSES: tuple[str, ...] = (
    "background",
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)

COCO_MASK_VALUES = ("class_index", "category_id")


def category_ids_to_classes(mask: np.ndarray, path: str | Path = "mask") -> np.ndarray:
    """Map a mask of raw category ids (1..90 with gaps; 0 background, 255 ignore) to class indices 0..80."""
    lookup = np.full(256, -1, dtype=np.int16)
    lookup[0] = 0
    lookup[255] = 255
    lookup[list(COCO_CATEGORY_IDS)] = np.arange(1, len(COCO_CATEGORY_IDS) + 1)
    mapped = lookup[mask]
    if (mapped < 0).any():
        unknown = sorted(int(value) for value in np.unique(mask[mapped < 0]))
        raise DatasetError(f"{path}: values {unknown} are not COCO category ids (nor 0 or 255)")
    return mapped.astype(np.uint8)


def _split_folder(root: Path, parents: list[str], split: str, what: str) -> Path:
    return find_first(
        [root / parent / name for parent in parents for name in (f"{split}2014", split)],
        f"{what} folder for split '{split}'",
    )


def _mask_folder(root: Path, split: str) -> Path | None:
    for candidate in (root / "SegmentationClass" / f"{split}2014", root / "SegmentationClass" / split):
        if candidate.is_dir():
            return candidate
    flat = root / "SegmentationClass"
    return flat if flat.is_dir() else None


def _mask_path(mask_folder: Path, image_id: str) -> Path:
    full_name = mask_folder / f"{image_id}.png"
    number_only = mask_folder / f"{image_id.rsplit('_', 1)[-1]}.png"
    return number_only if not full_name.is_file() and number_only.is_file() else full_name


def load_coco(
    root: str | Path,
    split: str,
    mask_values: str = "class_index",
    split_file: str | Path | None = None,
) -> Dataset:
    """Load a split of COCO 2014 in the WSSS layout (see the module docstring); labels come from the GT masks.

    Arguments:
      root: the COCO2014 / MSCOCO folder.
      split: "train" or "val" (any name works whose folders and split list exist).
      mask_values: "class_index" (default, the common WSSS download: PNG values are classes 0..80) or
        "category_id" (PNGs hold raw COCO category ids 1..90, e.g. from coco2voc): image-level labels are then
        mapped to classes 1..80, but the PNGs themselves stay raw, so convert them with
        `category_ids_to_classes` before evaluating against them or validating the dataset.
      split_file: a split list to use instead of looking for one under root.
    """
    if mask_values not in COCO_MASK_VALUES:
        raise DatasetError(f"mask_values '{mask_values}' is not one of {COCO_MASK_VALUES}")
    root = Path(root).expanduser()
    if split_file is None:
        split_file = find_first(
            [root / f"{split}.txt", root / f"ImageSets/{split}.txt", root / f"ImageSets/Segmentation/{split}.txt"],
            f"split list for split '{split}'",
        )
    image_ids = read_split_list(split_file)
    image_folder = _split_folder(root, ["JPEGImages", "images", "."], split, "image")
    mask_folder = _mask_folder(root, split)
    if mask_folder is None:
        mask_paths = [None] * len(image_ids)
    else:
        mask_paths = split_mask_paths([_mask_path(mask_folder, image_id) for image_id in image_ids])

    samples = []
    for image_id, mask_path in zip(image_ids, mask_paths, strict=True):
        labels: tuple[int, ...] = ()
        if mask_path is not None:
            mask = read_mask(mask_path)
            if mask_values == "category_id":
                mask = category_ids_to_classes(mask, mask_path)
            labels = mask_labels(mask, len(COCO_CLASSES), mask_path)
        samples.append(Sample(image_id, image_folder / f"{image_id}.jpg", mask_path, labels))
    label_source = "none" if mask_paths[0] is None else "gt_masks"
    return Dataset("coco", root, split, COCO_CLASSES, tuple(samples), label_source)
