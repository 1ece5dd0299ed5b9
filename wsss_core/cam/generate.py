"""Run a CAM generator over a dataset index and write the CAM artifacts (resumable, one image per chunk)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wsss_core.params import ParamsError
from wsss_core.progress import progress
from wsss_core.provenance import make_provenance
from wsss_core.store.dense import DenseMapWriter

CAM_VARIANTS = ("raw", "caa")  # Grad-CAM, and Grad-CAM refined by CAA


def foreground_words(setting: str, class_names: tuple[str, ...]) -> list[str]:
    """Words naming classes 1..C: the dataset's own names or CLIP-ES's synonym lists (which must fit the dataset)."""
    from wsss_core.prompts import CLIP_ES_COCO_NAMES, CLIP_ES_VOC_NAMES

    words = {"dataset": list(class_names[1:]), "clip_es_voc": CLIP_ES_VOC_NAMES, "clip_es_coco": CLIP_ES_COCO_NAMES}
    chosen = list(words[setting])
    if len(chosen) != len(class_names) - 1:
        raise ParamsError(
            f"cams.class_names: {setting!r} names {len(chosen)} classes, the dataset has {len(class_names) - 1}"
        )
    return chosen


def background_words(setting: str) -> list[str]:
    from wsss_core.prompts import CLIP_ES_BACKGROUND_COCO, CLIP_ES_BACKGROUND_VOC

    return {"clip_es_voc": list(CLIP_ES_BACKGROUND_VOC), "clip_es_coco": list(CLIP_ES_BACKGROUND_COCO), "none": []}[
        setting
    ]


def load_clip_from_params(settings: dict[str, Any], device: str):
    from wsss_core.models.clip import load_clip

    return load_clip(
        settings["arch"],
        pretrained=settings["pretrained"],
        checkpoint=settings["checkpoint"],
        sha256=settings["sha256"],
        model_cfg=settings["model_cfg"],
        random_init=settings["random_init"],
        seed=settings["seed"],
        device=device,
    )


def generate_cams(index_path: Path, out_dir: Path, params: dict[str, Any]) -> dict[str, Path]:
    """CLIP-ES CAMs for every image of the index; writes `out_dir/cams_raw.zarr` and `out_dir/cams_caa.zarr`."""
    from wsss_core.cam.clip_es import ClipEs, ClipEsSettings, upsample_cams
    from wsss_core.data.base import read_image
    from wsss_core.data.index import read_index, read_index_hashes, read_index_sizes
    from wsss_core.prompts import prompts_for

    cams, clip_params = params["cams"], params["models"]["clip"]
    dataset = read_index(index_path)
    size_of = read_index_sizes(index_path)
    image_sizes = np.array([size_of[sample.image_id] for sample in dataset.samples])
    clip = load_clip_from_params(clip_params, cams["device"])
    settings = ClipEsSettings(
        scales=tuple(cams["scales"]),
        flip=cams["flip"],
        caa_layers=cams["caa_layers"],
        sinkhorn_rounds=cams["sinkhorn_rounds"],
        affinity_power=cams["affinity_power"],
        affinity_source=cams["affinity_source"],
        feature_power=cams["feature_power"],
        box_threshold=cams["box_threshold"],
        reference_quirks=cams["reference_quirks"],
        amp=cams["amp"],
    )
    generator = ClipEs(
        clip,
        prompts_for(foreground_words(cams["class_names"], dataset.class_names), cams["template"]),
        prompts_for(background_words(cams["background_words"]), cams["template"]),
        settings,
    )
    at_image_size = cams["store_resolution"] == "image"
    patch = clip.patch_size
    sizes = image_sizes if at_image_size else -(-image_sizes // patch)
    channels = max(1, max(len(sample.labels) for sample in dataset.samples))
    image_hashes = read_index_hashes(index_path)
    writers = {}
    for variant in CAM_VARIANTS:
        provenance = make_provenance(
            "cams",
            {"cams": cams, "models.clip": clip_params},
            upstream={"index": index_path},
            checkpoints={"clip": clip.provenance},
            libraries=("open_clip_torch",),
            details={"variant": variant, "split": dataset.split, "resolution": cams["store_resolution"]},
        )
        writers[variant] = DenseMapWriter(
            out_dir / f"cams_{variant}.zarr",
            kind="cams",
            image_ids=[sample.image_id for sample in dataset.samples],
            sizes=sizes,
            dtype="float16",
            channels=channels,
            class_names=dataset.class_names,
            image_sha256=[image_hashes[sample.image_id] for sample in dataset.samples],
            provenance=provenance,
            extra={"resolution": cams["store_resolution"], "patch_size": patch},
        )
    pending = sorted(set(writers["raw"].pending()) | set(writers["caa"].pending()))
    for index in progress(pending, "cams", total=len(pending)):
        sample = dataset.samples[index]
        result = generator(read_image(sample.image_path), sample.labels)
        for variant, maps in (("raw", result.raw), ("caa", result.refined)):
            maps = upsample_cams(maps, tuple(image_sizes[index])) if at_image_size else maps.numpy()
            writers[variant].write(index, maps, classes=result.class_ids)
    return {variant: writer.commit() for variant, writer in writers.items()}
