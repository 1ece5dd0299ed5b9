"""Datasets: loaders for VOC, COCO, a user's folder and the synthetic demo set, a plain registry, and the index table.

ds = build_dataset("voc", "data/VOCdevkit", "train_aug")
validate_dataset(ds)
for sample in ds:
    image = read_image(sample.image_path)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from wsss_core.data.base import Dataset, DatasetError, Sample, read_image, read_mask, validate_dataset
from wsss_core.data.coco import COCO_CATEGORY_IDS, COCO_CLASSES, load_coco
from wsss_core.data.folder import load_folder
from wsss_core.data.index import dataset_from_index, index_table
from wsss_core.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_TEXTURES, generate_synthetic, load_synthetic
from wsss_core.data.voc import VOC_CLASSES, load_voc

DATASETS: dict[str, Callable[..., Dataset]] = {
    "voc": load_voc,
    "coco": load_coco,
    "folder": load_folder,
    "synthetic": load_synthetic,
}


def build_dataset(kind: str, root: str | Path, split: str, **options) -> Dataset:
    """Load split `split` of the dataset at `root` with the loader registered as `kind`, passing `options` on."""
    if kind not in DATASETS:
        raise DatasetError(f"unknown dataset kind '{kind}'; known kinds: {', '.join(DATASETS)}")
    loader = DATASETS[kind]
    try:
        inspect.signature(loader).bind(root, split, **options)
    except TypeError as error:
        raise DatasetError(f"dataset kind '{kind}': bad options {sorted(options)} ({error})") from None
    return loader(root, split, **options)


__all__ = [
    "COCO_CATEGORY_IDS",
    "COCO_CLASSES",
    "DATASETS",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_TEXTURES",
    "VOC_CLASSES",
    "Dataset",
    "DatasetError",
    "Sample",
    "build_dataset",
    "dataset_from_index",
    "generate_synthetic",
    "index_table",
    "load_coco",
    "load_folder",
    "load_synthetic",
    "load_voc",
    "read_image",
    "read_mask",
    "validate_dataset",
]
