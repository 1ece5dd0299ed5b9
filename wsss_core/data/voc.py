"""PASCAL VOC 2012 (+ SBD's SegmentationClassAug) in its standard folder layout.

VOCdevkit/VOC2012/
    JPEGImages/{id}.jpg
    SegmentationClassAug/{id}.png      SBD-augmented ground truth (greyscale class indices)
    SegmentationClass/{id}.png         official ground truth (palette PNG)
    Annotations/{id}.xml               object names and boxes
    ImageSets/Segmentation/{split}.txt train, val, test, and often train_aug
    ImageSets/SegmentationAug/train_aug.txt   where some downloads put train_aug instead
"""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

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

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

VOC_LABEL_SOURCES = ("gt_masks", "xml")


def voc_palette() -> list[int]:
    """The 256-entry VOC colour map as a flat [r, g, b, ...] list for `PIL.Image.putpalette`.

    Class k's colour spreads the bits of k over the three channels from the most significant bit down,
    so 1 = (128, 0, 0), 2 = (0, 128, 0), 255 (ignore) = (224, 224, 192).
    """
    palette = []
    for index in range(256):
        red = green = blue = 0
        bits = index
        for shift in range(7, -1, -1):
            red |= (bits & 1) << shift
            green |= ((bits >> 1) & 1) << shift
            blue |= ((bits >> 2) & 1) << shift
            bits >>= 3
        palette += [red, green, blue]
    return palette


def resolve_voc_root(root: str | Path) -> Path:
    """Accept either the VOC2012 folder itself or the VOCdevkit folder that contains it."""
    root = Path(root).expanduser()
    if (root / "JPEGImages").is_dir():
        return root
    if (root / "VOC2012" / "JPEGImages").is_dir():
        return root / "VOC2012"
    raise DatasetError(f"{root}: not a VOC folder: expected JPEGImages/ in it or in {root / 'VOC2012'}")


def labels_from_xml(path: Path, class_names: tuple[str, ...]) -> tuple[int, ...]:
    """Classes of the objects listed in a VOC annotation file; an unknown object name raises naming the file."""
    try:
        annotation = ElementTree.parse(path).getroot()
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file does not exist") from None
    except (ElementTree.ParseError, OSError) as error:
        raise DatasetError(f"{path}: cannot parse annotation XML ({error})") from error
    class_index = {name: index for index, name in enumerate(class_names) if index > 0}
    labels = set()
    # Only <object><name>: person objects also hold <part><name>head</name>, which names a body part, not a class.
    for obj in annotation.findall("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in class_index:
            raise DatasetError(f"{path}: unknown object class name '{name}'; known: {', '.join(class_names[1:])}")
        labels.add(class_index[name])
    return tuple(sorted(labels))


def load_voc(
    root: str | Path,
    split: str,
    label_source: str = "gt_masks",
    mask_dir: str | Path | None = None,
    class_names: tuple[str, ...] = VOC_CLASSES,
) -> Dataset:
    """Load a split of a VOC-layout dataset.

    Arguments:
      root: the VOC2012 folder, or the VOCdevkit folder holding it.
      split: name of the split list, e.g. "train_aug", "train", "val", "test".
      label_source: "gt_masks" derives image-level labels from the classes present in each GT mask (reads every
        mask); "xml" takes the object names of Annotations/{id}.xml. A split without masks (test) has labels
        only from XML; with "gt_masks" it gets label_source "none" and empty labels.
      mask_dir: folder of GT masks, relative to root or absolute; None picks SegmentationClassAug when it exists,
        else SegmentationClass.
      class_names: background first, then the foreground classes in mask-index order.
    """
    if label_source not in VOC_LABEL_SOURCES:
        raise DatasetError(f"label_source '{label_source}' is not one of {VOC_LABEL_SOURCES}")
    root = resolve_voc_root(root)
    class_names = tuple(class_names)
    split_list = find_first(
        [root / "ImageSets" / "Segmentation" / f"{split}.txt", root / "ImageSets" / "SegmentationAug" / f"{split}.txt"],
        f"split list for split '{split}'",
    )
    image_ids = read_split_list(split_list)

    if mask_dir is None:
        mask_folder = root / "SegmentationClassAug"
        if not mask_folder.is_dir():
            mask_folder = root / "SegmentationClass"
    else:
        mask_folder = root / mask_dir
        if not mask_folder.is_dir():
            raise DatasetError(f"{mask_folder}: mask folder does not exist")
    mask_paths = split_mask_paths([mask_folder / f"{image_id}.png" for image_id in image_ids])

    if label_source == "gt_masks" and mask_paths[0] is None:
        label_source = "none"
    samples = []
    for image_id, mask_path in zip(image_ids, mask_paths, strict=True):
        if label_source == "xml":
            labels = labels_from_xml(root / "Annotations" / f"{image_id}.xml", class_names)
        elif label_source == "gt_masks":
            labels = mask_labels(read_mask(mask_path), len(class_names), mask_path)
        else:
            labels = ()
        samples.append(Sample(image_id, root / "JPEGImages" / f"{image_id}.jpg", mask_path, labels))
    return Dataset("voc", root, split, class_names, tuple(samples), label_source)
