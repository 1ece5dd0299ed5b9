"""The cams stage family: one CAM run (`cams.runs.<name>`, any registered method) over a dataset index ->
artifacts/cams_<name>.zarr, resumable one image per chunk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wsss_core.progress import progress
from wsss_core.provenance import make_provenance
from wsss_core.store.dense import DenseMapWriter


def write_cams(name: str, index_path: Path, out_path: Path, params: dict[str, Any]) -> Path:
    """Run `cams.runs.<name>` on every image of the index and write the dense CAM artifact `out_path`."""
    from wsss_core.cam.methods import CAM_METHODS
    from wsss_core.cam.resize import upsample_cams
    from wsss_core.data.base import read_image
    from wsss_core.data.index import read_index, read_index_hashes, read_index_sizes
    from wsss_core.models.loading import clip_from_params

    run, clip_params = params["cams"]["runs"][name], params["models"]["clip"]
    method = CAM_METHODS[run["method"]]
    dataset = read_index(index_path)
    size_of, image_hashes = read_index_sizes(index_path), read_index_hashes(index_path)
    image_sizes = np.array([size_of[sample.image_id] for sample in dataset.samples])
    clip = clip_from_params(clip_params, params["cams"]["device"])
    generator = method.build(clip, run, dataset.class_names)

    at_image_size = run["store_resolution"] == "image"
    upstream = {"index": index_path}
    if method.READS:
        upstream[method.READS] = Path(run["reads"])
    provenance = make_provenance(
        "cams",
        {f"cams.runs.{name}": run, "models.clip": clip_params},
        upstream=upstream,
        checkpoints={"clip": clip.provenance},
        libraries=("open_clip_torch",),
        details={"run": name, **generator.details, "split": dataset.split, "resolution": run["store_resolution"]},
    )
    writer = DenseMapWriter(
        out_path,
        kind="cams",
        image_ids=[sample.image_id for sample in dataset.samples],
        sizes=image_sizes if at_image_size else -(-image_sizes // generator.patch_size),
        dtype="float16",
        channels=max(1, max(len(sample.labels) for sample in dataset.samples)),
        class_names=dataset.class_names,
        image_sha256=[image_hashes[sample.image_id] for sample in dataset.samples],
        provenance=provenance,
        extra={"resolution": run["store_resolution"], "patch_size": generator.patch_size},
    )
    pending = writer.pending()
    for index in progress(pending, out_path.stem, total=len(pending)):
        sample = dataset.samples[index]
        class_ids, maps = generator.cams(read_image(sample.image_path), sample.labels)
        maps = upsample_cams(maps, tuple(image_sizes[index])) if at_image_size else maps.numpy()
        writer.write(index, maps, classes=class_ids)
    return writer.commit()
