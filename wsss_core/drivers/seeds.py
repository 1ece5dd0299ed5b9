"""Turn a CAM artifact into a seed (pseudo-label) artifact: background score, argmax, optional dense CRF."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wsss_core.progress import progress
from wsss_core.provenance import make_provenance
from wsss_core.seeding.background import background_score, label_from_cams
from wsss_core.store.dense import DenseMaps, DenseMapWriter
from wsss_core.store.table import ArtifactError


def open_cams_with_index(cams_path: Path):
    """A CAM artifact with the dataset index it was computed from: (cams, index path, dataset, image sizes)."""
    from wsss_core.data.index import read_index, read_index_sizes

    cams = DenseMaps(cams_path, kind="cams")
    index_record = cams.provenance.get("upstream", {}).get("index")
    if index_record is None:
        raise ArtifactError(f"{cams_path}: provenance names no dataset index")
    index_path = Path(index_record["path"])
    dataset = read_index(index_path)
    size_of = read_index_sizes(index_path)
    cams.check_images(index_path)
    return cams, index_path, dataset, size_of


def seed_writer(out_path: Path, cams: DenseMaps, size_of: dict, provenance: dict[str, Any]) -> DenseMapWriter:
    """The label-map writer of a seed artifact: one image-sized uint8 map per image of `cams`."""
    return DenseMapWriter(
        out_path,
        kind="labels",
        image_ids=cams.image_ids,
        sizes=np.array([size_of[image_id] for image_id in cams.image_ids]),
        dtype="uint8",
        class_names=cams.class_names,
        image_sha256=cams.image_sha256,
        provenance=provenance,
    )


def make_seeds(cams_path: Path, out_path: Path, name: str, settings: dict[str, Any]) -> Path:
    """Seeds for every image of `cams_path` with the variant `settings` (a `seeds.variants.<name>` section)."""
    from wsss_core.cam.resize import upsample_cams
    from wsss_core.data.base import read_image

    cams, index_path, dataset, size_of = open_cams_with_index(cams_path)
    samples = {sample.image_id: sample for sample in dataset.samples}
    crf = settings["crf"]
    provenance = make_provenance(
        "seeds",
        {f"seeds.variants.{name}": settings},
        upstream={"cams": cams_path, "index": index_path},
        libraries=("pydensecrf2",) if crf["enabled"] else (),
        details={"variant": name, "split": dataset.split},
    )
    writer = seed_writer(out_path, cams, size_of, provenance)
    pending = set(writer.pending())
    crf_options = {key: value for key, value in crf.items() if key != "enabled"}
    for index, (image_id, maps) in enumerate(progress(cams, f"seeds {name}", total=len(cams))):
        if index not in pending:
            continue
        # float16 storage and bilinear resizing may step just outside [0, 1]
        full = np.clip(upsample_cams(maps, size_of[image_id]), 0.0, 1.0)
        class_ids = cams.classes(index).tolist()
        bg = background_score(full, settings["background"], settings["background_value"])
        if crf["enabled"]:
            from wsss_core.seeding.crf import crf_seeds

            labels = crf_seeds(read_image(samples[image_id].image_path), full, class_ids, bg, **crf_options)
        else:
            labels = label_from_cams(full, class_ids, bg)
        writer.write(index, labels)
    return writer.commit()
