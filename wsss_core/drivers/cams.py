"""The cams stage family: one CAM run (`cams.runs.<name>`, any registered method) over a dataset index ->
artifacts/cams_<name>.zarr, resumable one image per chunk."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsss_core.progress import progress
from wsss_core.provenance import make_provenance
from wsss_core.store.dense import DenseMapWriter


def write_cam_maps(
    out_path: Path,
    index_path: Path,
    dataset,
    provenance: dict[str, Any],
    *,
    patch_size: int,
    resolution: str,
    cams_of: Callable[[np.ndarray, Sequence[int], tuple[int, int]], tuple[list[int], np.ndarray]],
) -> Path:
    """The dense CAM artifact `out_path` of every image of the index, resumable one image per chunk.
    `cams_of(image, labels, (height, width))` gives an image's (class ids, maps), on the token grid of `patch_size`
    or at image size as `resolution` says."""
    from wsss_core.data.base import read_image
    from wsss_core.data.index import read_index_hashes, read_index_sizes

    size_of, image_hashes = read_index_sizes(index_path), read_index_hashes(index_path)
    image_sizes = np.array([size_of[sample.image_id] for sample in dataset.samples])
    writer = DenseMapWriter(
        out_path,
        kind="cams",
        image_ids=[sample.image_id for sample in dataset.samples],
        sizes=image_sizes if resolution == "image" else -(-image_sizes // patch_size),
        dtype="float16",
        channels=max(1, max(len(sample.labels) for sample in dataset.samples)),
        class_names=dataset.class_names,
        image_sha256=[image_hashes[sample.image_id] for sample in dataset.samples],
        provenance=provenance,
        extra={"resolution": resolution, "patch_size": patch_size},
    )
    pending = writer.pending()
    for index in progress(pending, out_path.stem, total=len(pending)):
        sample = dataset.samples[index]
        class_ids, maps = cams_of(read_image(sample.image_path), sample.labels, tuple(image_sizes[index]))
        writer.write(index, maps, classes=class_ids)
    return writer.commit()


def write_cams(name: str, index_path: Path, out_path: Path, params: dict[str, Any]) -> Path:
    """Run `cams.runs.<name>` on every image of the index and write the dense CAM artifact `out_path`."""
    from wsss_core.cam.methods import CAM_METHODS
    from wsss_core.cam.resize import upsample_cams
    from wsss_core.data.index import read_index
    from wsss_core.models.loading import clip_from_params

    run, clip_params = params["cams"]["runs"][name], params["models"]["clip"]
    method = CAM_METHODS[run["method"]]
    dataset = read_index(index_path)
    clip = clip_from_params(clip_params, params["cams"]["device"])
    generator = method.build(clip, run, dataset.class_names)

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

    def cams_of(image: np.ndarray, labels: Sequence[int], size: tuple[int, int]) -> tuple[list[int], np.ndarray]:
        class_ids, maps = generator.cams(image, labels)
        return class_ids, upsample_cams(maps, size) if run["store_resolution"] == "image" else maps.numpy()

    return write_cam_maps(
        out_path,
        index_path,
        dataset,
        provenance,
        patch_size=generator.patch_size,
        resolution=run["store_resolution"],
        cams_of=cams_of,
    )
