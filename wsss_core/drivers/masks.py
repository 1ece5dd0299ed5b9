"""The sam_masks stage: class-agnostic masks for every image of the dataset's splits, stored to be shared.

Writes `out_dir/<split>/` (see records.py) for the training split and, with the run's `eval_split`, the evaluation
split (retraining's SAMS post-processing uses those). The provenance of each split records the params that shape
the masks -- not the device, which may differ between the workers of an engine -- the SAM checkpoint's
sha256 and the dataset index, whose per-image hashes are copied into images.parquet so that a team importing the
masks can check them against its own data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsss_core.masks.records import records_to_table
from wsss_core.masks.writer import MaskWriter, default_part_images
from wsss_core.params import ParamsError
from wsss_core.provenance import make_provenance
from wsss_core.store.atomic import atomic_directory
from wsss_core.store.dense import DEFAULT_SCRATCH
from wsss_core.store.table import ArtifactError


def mask_splits(dataset: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """The dataset splits that get masks: the training split, and the evaluation split when asked for."""
    splits = [dataset["train_split"]]
    if settings["eval_split"] and dataset["eval_split"] not in splits:
        splits.append(dataset["eval_split"])
    return splits


def recorded_settings(settings: dict[str, Any], n_images: int) -> dict[str, Any]:
    """The params that decide the masks' content: the chosen generator's section and the filter, not the device."""
    fma = settings["fma"]
    recorded: dict[str, Any] = {
        "generator": settings["generator"],
        "part_images": settings["part_images"] or default_part_images(n_images),
        "occupation_filter": fma["occupation_filter"],
        "t_r": fma["t_r"],
    }
    if settings["generator"] == "sam":
        recorded["sam"] = settings["sam"]
        recorded["whole_iou_bonus"] = fma["whole_iou_bonus"]
        recorded["whole_nms_bonus"] = fma["whole_nms_bonus"]
    else:
        recorded["felzenszwalb"] = settings["felzenszwalb"]
    return recorded


def sam_checkpoint_record(sam: dict[str, Any], key: str = "sam_masks.runs.<run>.sam") -> dict[str, Any]:
    """What the SAM weights are, for provenance, checked before any model is built (a merge needs no model).
    `key`: the params key of the `sam` section, named in errors."""
    from wsss_core.models.checkpoints import verify_checkpoint
    from wsss_core.models.sam import OFFICIAL_CHECKPOINTS

    if sam["model_type"] == "custom" and sam["model_cfg"] is None:
        raise ParamsError(f"{key}.model_cfg: model_type custom needs the build_sam_from_config arguments")
    if sam["random_init"]:
        if sam["model_type"] != "custom":
            raise ParamsError(f"{key}.random_init: random weights only for model_type custom (tests, demos)")
        return {"model_type": "custom", "random_init": {"seed": sam["seed"]}}
    if sam["checkpoint"] is None:
        raise ParamsError(f"{key}.checkpoint: the SAM weights file is required (or random_init for custom)")
    official = OFFICIAL_CHECKPOINTS.get(sam["model_type"])
    hint = f"{official['url']} (the segment-anything README's {sam['model_type']} checkpoint)" if official else ""
    return {
        "model_type": sam["model_type"],
        "checkpoint": verify_checkpoint(sam["checkpoint"], sam["sha256"], hint).as_dict(),
    }


def load_generator(settings: dict[str, Any], device: str):
    """The configured generator: an object whose generate(image) returns mask records."""
    fma = settings["fma"]
    t_r = fma["t_r"] if fma["occupation_filter"] else None
    if settings["generator"] == "felzenszwalb":
        from wsss_core.masks.felzenszwalb import FelzenszwalbGenerator

        fh = settings["felzenszwalb"]
        return FelzenszwalbGenerator(fh["scales"], fh["sigma"], fh["min_size"], t_r)

    from wsss_core.masks.sam_generator import LevelledMaskGenerator
    from wsss_core.models.sam import build_sam, build_sam_from_config

    sam = settings["sam"]
    if sam["model_type"] == "custom":
        checkpoint = None if sam["random_init"] else sam["checkpoint"]
        handle = build_sam_from_config(
            **sam["model_cfg"], seed=sam["seed"], checkpoint=checkpoint, sha256=sam["sha256"], device=device
        )
    else:
        handle = build_sam(sam["model_type"], sam["checkpoint"], sha256=sam["sha256"], device=device)
    options = ("points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh")
    options += ("stability_score_offset", "box_nms_thresh", "crop_n_layers", "crop_nms_thresh", "crop_overlap_ratio")
    options += ("crop_n_points_downscale_factor", "min_mask_region_area")
    return LevelledMaskGenerator(
        handle.sam,
        whole_iou_bonus=fma["whole_iou_bonus"],
        whole_nms_bonus=fma["whole_nms_bonus"],
        occupation_threshold=t_r,
        **{name: sam[name] for name in options},
    )


def _writer_for(split: str, index_path: Path, settings: dict[str, Any], checkpoints: dict, scratch_root: Path):
    from wsss_core.masks.records import read_index_hashes

    columns, _ = read_index_hashes(index_path)
    n_images = len(columns["image_id"])
    if n_images == 0:
        raise ArtifactError(f"{index_path}: the index lists no images")
    provenance = make_provenance(
        "sam_masks",
        {"sam_masks": recorded_settings(settings, n_images)},
        upstream={"index": index_path},
        checkpoints=checkpoints,
        libraries=("segment-anything", "pycocotools", "scipy"),
        details={
            "split": split,
            "n_images": n_images,
            "records": "segment-anything coco_rle records + image_id, level (0 subpart, 1 part, 2 whole), kept",
        },
    )
    return MaskWriter(
        split,
        image_ids=columns["image_id"],
        image_sha256=columns["image_sha256"],
        sizes=np.stack([columns["height"], columns["width"]], axis=1),
        provenance=provenance,
        part_images=settings["part_images"],
        scratch_root=scratch_root,
    )


@dataclass(frozen=True)
class MaskJob:
    """A sam_masks run's generator (SAM with FMA-WSSS's changes, or Felzenszwalb): image -> mask records."""

    settings: dict[str, Any]

    def build(self, device: str) -> _MaskWorker:
        return _MaskWorker(load_generator(self.settings, device))


class _MaskWorker:
    details: dict[str, Any] = {}  # the checkpoint's record is taken before any model is built

    def __init__(self, generator) -> None:
        self.generator = generator

    def __call__(self, item: tuple[str, np.ndarray]):
        image_id, image = item
        return records_to_table(image_id, self.generator.generate(image))


def generate_masks(
    index_dir: Path,
    out_dir: Path,
    dataset: dict[str, Any],
    settings: dict[str, Any],
    device: str,
    engine: dict[str, Any],
    *,
    scratch_root: Path = DEFAULT_SCRATCH,
    key: str = "sam_masks.runs.<run>",
) -> Path:
    """Compute the masks of one run (`settings`: a sam_masks.runs entry) still missing for the splits of `dataset`
    (the dataset params section) on the engine `engine` (the params' engine section) and write `out_dir`. `key`: the
    run's params key, named in errors."""
    from wsss_core.data.base import DatasetError, read_image
    from wsss_core.data.index import read_index
    from wsss_core.engine import open_engine
    from wsss_core.hashing import sha256_file

    checkpoints = (
        {"sam": sam_checkpoint_record(settings["sam"], f"{key}.sam")} if settings["generator"] == "sam" else {}
    )
    writers = {}
    for split in mask_splits(dataset, settings):
        index_path = index_dir / f"{split}.parquet"
        writers[split] = _writer_for(split, index_path, settings, checkpoints, scratch_root)

    if any(writer.pending() for writer in writers.values()):
        with open_engine(engine, MaskJob(settings), device, "sam_masks") as running:
            for split, writer in writers.items():
                samples = read_index(index_dir / f"{split}.parquet").samples

                def load(index: int, writer=writer, samples=samples) -> tuple[str, np.ndarray]:
                    sample = samples[index]
                    if sha256_file(sample.image_path) != writer.image_sha256[index]:
                        raise DatasetError(f"{sample.image_path}: changed since the index was built; rerun prepare")
                    image = read_image(sample.image_path)
                    if image.shape[:2] != tuple(writer.sizes[index]):
                        raise DatasetError(
                            f"{sample.image_path}: is {image.shape[:2]}, the index says {tuple(writer.sizes[index])}"
                        )
                    return sample.image_id, image

                running.run(writer.pending(), load, writer.write, writer.image_ids)

    with atomic_directory(out_dir) as building:
        for split, writer in writers.items():
            writer.commit_into(building / split)
    for writer in writers.values():
        writer.cleanup()
    return out_dir
