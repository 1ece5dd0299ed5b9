"""The two CAM-network stage families (wsss_core/camnet):

- `cam_net@<run>`: train `cam_nets.runs.<run>` on the training split -> artifacts/camnet_<run>/ and its curves,
  metrics/camnet_<run>/loss.csv (iteration and the method's loss columns) and lr.csv. Training resumes from
  `.wsss_scratch/camnet_<run>-<key>/` after a kill; the key hashes the run's params, the index's sha256 and the code.
- `net_cams@<name>`: the CAMs of the network `cam_nets.cams.<name>.reads` names, at image size ->
  artifacts/cams_<name>.zarr, resumable one image per chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsss_core.store.scratch import DEFAULT_SCRATCH


def train_cam_net(
    name: str,
    index_path: Path,
    artifacts_dir: Path,
    metrics_dir: Path,
    params: dict[str, Any],
    *,
    scratch_root: Path = DEFAULT_SCRATCH,
    on_step: Callable[[int], None] | None = None,
) -> Path:
    """Train `cam_nets.runs.<name>`; write `artifacts_dir/camnet_<name>` and the curves."""
    from wsss_core.camnet import CAM_NETS
    from wsss_core.camnet.artifact import STAGE, write_camnet
    from wsss_core.data.index import read_index
    from wsss_core.drivers.adapt import write_curves
    from wsss_core.hashing import sha256_path
    from wsss_core.models import resolve_device
    from wsss_core.params import ParamsError
    from wsss_core.provenance import canonical, make_provenance
    from wsss_core.store.scratch import resumable_work

    section = params["cam_nets"]
    run, key = section["runs"][name], f"cam_nets.runs.{name}"
    method = CAM_NETS[run["method"]]
    dataset = read_index(index_path)
    if run["batch_size"] > len(dataset.samples):  # an epoch drops its incomplete batch: it would have no update
        raise ParamsError(
            f"{key}.batch_size: {run['batch_size']} is larger than the {len(dataset.samples)} training images of "
            f"{index_path}"
        )
    out = artifacts_dir / f"camnet_{name}"
    inputs = {"read": {key: run}, "upstream": {"index": sha256_path(index_path)}}
    with resumable_work(out, canonical(inputs), scratch_root) as work_dir:
        built, curve = method.fit(
            run,
            dataset,
            device=resolve_device(section["device"]),
            work_dir=work_dir,
            checkpoint_every=section["checkpoint_every"],
            on_step=on_step,
        )
        last = curve[-1]
        provenance = make_provenance(
            STAGE,
            {key: run},
            upstream={"index": index_path},
            checkpoints=built.checkpoints,
            libraries=("timm", "safetensors"),
            details={
                "run": name,
                "method": run["method"],
                "class_names": list(dataset.class_names),
                "split": dataset.split,
                "updates": len(curve),
                "final_loss": {column: last[column] for column in method.LOSS_COLUMNS},
            },
        )
        write_camnet(out, built.network, provenance)
        write_curves(metrics_dir / f"camnet_{name}", curve, method.LOSS_COLUMNS)
    return out


@dataclass(frozen=True)
class NetCamJob:
    """The CAMs of the trained CAM network in `reads` with a `cam_nets.cams` entry's settings."""

    settings: dict[str, Any]
    reads: Path

    def build(self, device: str) -> _NetCamWorker:
        from wsss_core.camnet import CAM_NETS
        from wsss_core.camnet.artifact import load_camnet
        from wsss_core.models import resolve_device

        torch_device = resolve_device(device)
        built, _ = load_camnet(self.reads, torch_device)
        return _NetCamWorker(CAM_NETS[self.settings["method"]].cam_generator(built, self.settings, torch_device), built)


class _NetCamWorker:
    def __init__(self, generator, built) -> None:
        self.generator = generator
        self.details = {"patch_size": built.network.patch_size}

    def __call__(self, item: tuple[np.ndarray, list[int], tuple[int, int]]) -> tuple[list[int], np.ndarray]:
        image, labels, _size = item
        return self.generator(image, labels)  # already at image size


def write_net_cams(name: str, index_path: Path, out_path: Path, params: dict[str, Any]) -> Path:
    """The CAMs of `cam_nets.cams.<name>` for every image of the index -> the dense CAM artifact `out_path`."""
    from wsss_core.camnet.artifact import read_camnet_provenance
    from wsss_core.data.index import read_index
    from wsss_core.drivers.cams import write_cam_maps
    from wsss_core.provenance import make_provenance
    from wsss_core.store.table import ArtifactError

    settings, key = params["cam_nets"]["cams"][name], f"cam_nets.cams.{name}"
    reads = Path(settings["reads"])
    trained = read_camnet_provenance(reads)
    if trained["details"]["method"] != settings["method"]:
        method = trained["details"]["method"]
        raise ArtifactError(f"{key}.reads: {reads} is a {method} network, not {settings['method']}")
    dataset = read_index(index_path)
    if list(trained["details"]["class_names"]) != list(dataset.class_names):
        raise ArtifactError(
            f"{reads}: trained for the classes {trained['details']['class_names']}, the dataset has "
            f"{list(dataset.class_names)}"
        )
    provenance = make_provenance(
        "cams",
        {key: settings},
        upstream={"index": index_path, "camnet": reads},
        libraries=("timm",),
        details={"run": name, "method": settings["method"], "split": dataset.split, "resolution": "image"},
    )
    return write_cam_maps(
        out_path,
        index_path,
        dataset,
        NetCamJob(settings, reads),
        engine=params["engine"],
        device=params["cam_nets"]["device"],
        resolution="image",
        provenance_of=lambda _details: provenance,
    )
