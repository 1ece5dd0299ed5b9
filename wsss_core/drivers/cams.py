"""The CAM stage families' work: a CAM model over every image of a dataset index -> a dense CAM artifact, resumable
one image at a time, on the engine the params choose (wsss_core/engine). cams@ runs a CLIP CAM method (`cams.runs`),
net_cams@ a trained CAM network (drivers/cam_nets.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsss_core.engine import ImageJob, open_engine
from wsss_core.provenance import make_provenance
from wsss_core.store.dense import DenseMapWriter


def write_cam_maps(
    out_path: Path,
    index_path: Path,
    dataset,
    job: ImageJob,
    *,
    engine: dict[str, Any],
    device: str,
    resolution: str,
    provenance_of: Callable[[dict[str, Any]], dict[str, Any]],
) -> Path:
    """The dense CAM artifact `out_path` of every image of the index. `job`'s workers map (image, labels, (height,
    width)) to (class ids, maps) on the token grid of their `details["patch_size"]`, or at image size as `resolution`
    says; `provenance_of(details)` is the artifact's provenance. `engine`: the params' engine section."""
    from wsss_core.data.base import read_image
    from wsss_core.data.index import read_index_hashes, read_index_sizes

    size_of, image_hashes = read_index_sizes(index_path), read_index_hashes(index_path)
    image_ids = [sample.image_id for sample in dataset.samples]
    image_sizes = np.array([size_of[image_id] for image_id in image_ids])
    with open_engine(engine, job, device, out_path.stem) as running:
        patch_size = running.details["patch_size"]
        writer = DenseMapWriter(
            out_path,
            kind="cams",
            image_ids=image_ids,
            sizes=image_sizes if resolution == "image" else -(-image_sizes // patch_size),
            dtype="float16",
            channels=max(1, max(len(sample.labels) for sample in dataset.samples)),
            class_names=dataset.class_names,
            image_sha256=[image_hashes[image_id] for image_id in image_ids],
            provenance=provenance_of(running.details),
            extra={"resolution": resolution, "patch_size": patch_size},
        )

        def load(index: int) -> tuple[np.ndarray, list[int], tuple[int, int]]:
            sample = dataset.samples[index]
            return read_image(sample.image_path), list(sample.labels), tuple(int(v) for v in image_sizes[index])

        def write(index: int, result: tuple[list[int], np.ndarray]) -> None:
            class_ids, maps = result
            writer.write(index, maps, classes=class_ids)

        running.run(writer.pending(), load, write, image_ids)
    return writer.commit()


@dataclass(frozen=True)
class ClipCamJob:
    """A `cams.runs` entry's CAM method on the CLIP `clip_params` (models.clip) describes."""

    run: dict[str, Any]
    clip_params: dict[str, Any]
    class_names: tuple[str, ...]

    def build(self, device: str) -> _ClipCamWorker:
        from wsss_core.cam.methods import CAM_METHODS
        from wsss_core.models.loading import clip_from_params

        clip = clip_from_params(self.clip_params, device)
        generator = CAM_METHODS[self.run["method"]].build(clip, self.run, list(self.class_names))
        return _ClipCamWorker(generator, clip.provenance, self.run["store_resolution"])


class _ClipCamWorker:
    def __init__(self, generator, clip_record: dict[str, Any], resolution: str) -> None:
        self.generator, self.resolution = generator, resolution
        self.details = {"clip": clip_record, "generator": generator.details, "patch_size": generator.patch_size}

    def __call__(self, item: tuple[np.ndarray, Sequence[int], tuple[int, int]]) -> tuple[list[int], np.ndarray]:
        from wsss_core.cam.resize import upsample_cams

        image, labels, size = item
        class_ids, maps = self.generator.cams(image, labels)
        return class_ids, upsample_cams(maps, size) if self.resolution == "image" else maps.numpy()


def write_cams(name: str, index_path: Path, out_path: Path, params: dict[str, Any]) -> Path:
    """Run `cams.runs.<name>` on every image of the index and write the dense CAM artifact `out_path`."""
    from wsss_core.cam.methods import CAM_METHODS
    from wsss_core.data.index import read_index

    run, clip_params = params["cams"]["runs"][name], params["models"]["clip"]
    method = CAM_METHODS[run["method"]]
    dataset = read_index(index_path)
    upstream = {"index": index_path}
    if method.READS:
        upstream[method.READS] = Path(run["reads"])

    def provenance_of(details: dict[str, Any]) -> dict[str, Any]:
        return make_provenance(
            "cams",
            {f"cams.runs.{name}": run, "models.clip": clip_params},
            upstream=upstream,
            checkpoints={"clip": details["clip"]},
            libraries=("open_clip_torch",),
            details={
                "run": name,
                **details["generator"],
                "split": dataset.split,
                "resolution": run["store_resolution"],
            },
        )

    return write_cam_maps(
        out_path,
        index_path,
        dataset,
        ClipCamJob(run, clip_params, tuple(dataset.class_names)),
        engine=params["engine"],
        device=params["cams"]["device"],
        resolution=run["store_resolution"],
        provenance_of=provenance_of,
    )
