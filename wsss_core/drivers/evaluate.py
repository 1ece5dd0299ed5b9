"""Evaluation of a label-map artifact against the GT of the split it was made for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsss_core.audit import PROVENANCE_FILE
from wsss_core.data.base import read_mask
from wsss_core.data.index import read_index
from wsss_core.metrics.confusion import ConfusionAccumulator
from wsss_core.metrics.report import write_report
from wsss_core.progress import progress
from wsss_core.provenance import dumps, make_provenance
from wsss_core.store.dense import DenseMaps
from wsss_core.store.seal import sealed_directory
from wsss_core.store.table import ArtifactError


def index_of_artifact(maps: DenseMaps) -> Path:
    """The dataset index an artifact was computed from, found by walking its provenance upstream."""
    from wsss_core.audit import read_provenance

    provenance = maps.provenance
    for _ in range(16):  # a pipeline is a handful of stages deep; stop on cycles
        upstream = provenance.get("upstream", {})
        if "index" in upstream:
            return Path(upstream["index"]["path"])
        if len(upstream) != 1:
            break
        provenance = read_provenance(next(iter(upstream.values()))["path"])
    raise ArtifactError(f"{maps.path}: provenance names no dataset index upstream")


def oracle_background(cams_path: Path, samples: dict, num_classes: int, powers: list[float]) -> dict[str, Any]:
    """The best background power for the argmax rule on `cams_path`, chosen by looking at GT (flagged as such)."""
    import numpy as np

    from wsss_core.cam.resize import upsample_cams
    from wsss_core.metrics.oracle import sweep_background

    cams = DenseMaps(cams_path, kind="cams")

    def items():
        for index, (image_id, maps) in enumerate(cams):
            gt = read_mask(samples[image_id].mask_path)
            full = upsample_cams(maps, gt.shape)
            yield np.clip(full, 0.0, 1.0), cams.classes(index), gt

    sweep = sweep_background(items(), num_classes, "power", powers)
    return {
        "rule": "argmax over [(1 - max cam)^power, cams]",
        "cams": cams_path.stem,
        "best_power": sweep["best_value"],
        "best_miou": sweep["best_miou"],
        "selected_with_gt": True,
    }


def evaluate_label_maps(labels_path: Path, out_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Accumulate one confusion matrix over the whole split and write the report directory."""
    maps = DenseMaps(labels_path, kind="labels")
    index_path = index_of_artifact(maps)
    maps.check_images(index_path)
    dataset = read_index(index_path)
    samples = {sample.image_id: sample for sample in dataset.samples}
    accumulator = ConfusionAccumulator(len(dataset.class_names), ignore_index=settings["ignore_index"])
    for image_id, labels in progress(maps, f"evaluate {labels_path.name}", total=len(maps)):
        sample = samples.get(image_id)
        if sample is None:
            raise ArtifactError(f"{labels_path}: image {image_id!r} is not in the index {index_path}")
        if sample.mask_path is None:
            raise ArtifactError(f"{index_path}: split {dataset.split!r} has no GT mask for {image_id!r}")
        gt = read_mask(sample.mask_path)
        if gt.shape != labels.shape:
            raise ArtifactError(f"{labels_path}: map of {image_id!r} is {labels.shape}, its GT mask is {gt.shape}")
        accumulator.update(labels, gt)
    upstream = {"labels": labels_path, "index": index_path}
    extra: dict[str, Any] = {"n_images": accumulator.n_images}
    cams_record = maps.provenance.get("upstream", {}).get("cams")
    if cams_record is not None and settings["oracle_background_powers"]:
        cams_path = Path(cams_record["path"])
        upstream["cams"] = cams_path
        extra["oracle"] = oracle_background(
            cams_path, samples, len(dataset.class_names), settings["oracle_background_powers"]
        )
    provenance = make_provenance(
        "evaluate",
        {"evaluate": settings},
        upstream=upstream,
        details={"split": dataset.split, "n_images": accumulator.n_images},
    )
    with sealed_directory(out_dir) as tmp:
        summary = write_report(
            tmp,
            accumulator.matrix,
            dataset.class_names,
            extra=extra,
            title=f"{labels_path.stem} on {dataset.split}",
        )
        (tmp / PROVENANCE_FILE).write_text(dumps(provenance))
    summary["n_images"] = accumulator.n_images
    return summary
