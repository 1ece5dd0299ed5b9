"""The retrain stage's work: train one run (`retrain.runs.<name>`: a network on a seed artifact) and write its
segmenter artifact.

`artifacts/segmenter_<name>/` holds `weights.safetensors` (the trained weights; for the WeCLIP head only the head,
CLIP being frozen and reloaded from its own recorded source) and `provenance.json` (the run's params, the seeds and
index it was trained on, backbone checkpoints, and the details prediction needs to rebuild the network). The loss
curve goes to a CSV for `dvc plots` (`metrics/retrain_<name>/curve.csv`). Training resumes from
`.wsss_scratch/segmenter_<name>-<hash of inputs>/` after a kill.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wsss_core.audit import PROVENANCE_FILE
from wsss_core.data.base import Sample, read_image
from wsss_core.params import ParamsError
from wsss_core.provenance import dumps, make_provenance
from wsss_core.store.atomic import atomic_file
from wsss_core.store.dense import DenseMaps
from wsss_core.store.scratch import DEFAULT_SCRATCH, resumable_work
from wsss_core.store.seal import sealed_directory
from wsss_core.store.table import ArtifactError

WEIGHTS_FILE = "weights.safetensors"
# Libraries whose versions can change a trained network: open_clip (CLIP), torchvision (ResNet), timm (ViT).
NETWORK_LIBRARIES = {"weclip_head": ("open_clip_torch",), "deeplabv3plus": ("torchvision",), "weaktr": ("timm",)}


class SeedTrainingData:
    """Training pairs (image, seed labels) for the images of a seed artifact, read from disk on demand."""

    def __init__(self, seeds: DenseMaps, samples: dict[str, Sample]) -> None:
        missing = [image_id for image_id in seeds.image_ids if image_id not in samples]
        if missing:
            raise ArtifactError(f"{seeds.path}: image {missing[0]!r} is not in its dataset index")
        self.seeds = seeds
        self.samples = [samples[image_id] for image_id in seeds.image_ids]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.samples[index]
        image, labels = read_image(sample.image_path), np.asarray(self.seeds[index], dtype=np.uint8)
        if image.shape[:2] != labels.shape:
            raise ArtifactError(
                f"{self.seeds.path}: seeds of {sample.image_id!r} are {labels.shape}, the image is {image.shape[:2]}"
            )
        return image, labels


def curve_csv(curve: list[dict[str, Any]]) -> str:
    """The loss curve as CSV text (step, loss, lr) for `dvc plots`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["step", "loss", "lr"], lineterminator="\n")
    writer.writeheader()
    for row in curve:
        writer.writerow({"step": row["step"], "loss": f"{row['loss']:.6f}", "lr": f"{row['lr']:.6e}"})
    return buffer.getvalue()


def retrain(
    params: dict[str, Any],
    run_name: str,
    artifacts_dir: Path,
    out_dir: Path,
    curve_path: Path,
    *,
    scratch_root: Path = DEFAULT_SCRATCH,
    on_step: Callable[[int], None] | None = None,
) -> Path:
    """Train `retrain.runs.<run_name>` on `artifacts_dir/seeds_<its seeds>.zarr`; write `out_dir` and the curve CSV."""
    from safetensors.torch import save_file

    from wsss_core.data.index import read_index
    from wsss_core.drivers.evaluate import index_of_artifact
    from wsss_core.models import resolve_device
    from wsss_core.models.loading import clip_from_params
    from wsss_core.params import require_entry
    from wsss_core.params.pipeline import CLIP_NETWORKS
    from wsss_core.segment.networks import build_network
    from wsss_core.segment.train import OptimizerSettings, TrainSettings, train

    section, key = params["retrain"], f"retrain.runs.{run_name}"
    # The run's seeds name a seed stage of these params: checked on load (params/pipeline.py).
    settings = require_entry(params, "retrain.runs", run_name)
    name = settings["network"]
    network_settings = settings[name]
    schedule = settings["schedule"]
    if name == "deeplabv3plus" and schedule["batch_size"] < 2:
        raise ParamsError(f"{key}.schedule.batch_size: DeepLabV3+ needs at least 2 (batch norm in ASPP pooling)")
    seeds_path = artifacts_dir / f"seeds_{settings['seeds']}.zarr"
    seeds = DenseMaps(seeds_path, kind="labels")
    index_path = index_of_artifact(seeds)
    seeds.check_images(index_path)
    dataset = read_index(index_path)
    if list(dataset.class_names) != list(seeds.class_names):
        raise ArtifactError(f"{seeds_path}: class names differ from its index {index_path}")
    data = SeedTrainingData(seeds, {sample.image_id: sample for sample in dataset.samples})

    device = resolve_device(section["device"])
    clip_params = params["models"]["clip"]
    clip = clip_from_params(clip_params, device) if name in CLIP_NETWORKS else None
    network = build_network(
        name,
        network_settings,
        len(dataset.class_names),
        clip=clip,
        device=device,
        seed=settings["seed"],
        key=f"{key}.{name}",
    )
    recorded_params = {key: settings}
    if clip is not None:
        recorded_params["models.clip"] = clip_params
    provenance = make_provenance(
        "retrain",
        recorded_params,
        upstream={"seeds": seeds_path, "index": index_path},
        checkpoints=network.checkpoints,
        libraries=NETWORK_LIBRARIES[name],
        details={
            "run": run_name,
            "network": name,
            "class_names": list(dataset.class_names),
            "split": dataset.split,
            "mean": list(network.mean),
            "std": list(network.std),
        },
    )
    with resumable_work(out_dir, provenance, scratch_root) as work_dir:
        clipping = settings["gradient_clipping"]
        curve = train(
            network.module,
            data,
            TrainSettings(
                iterations=schedule["iterations"],
                batch_size=schedule["batch_size"],
                crop_size=schedule["crop_size"],
                scale_range=tuple(schedule["scale_range"]),
                flip=schedule["flip"],
                warmup_iterations=schedule["warmup_iterations"],
                warmup_ratio=schedule["warmup_ratio"],
                poly_power=schedule["poly_power"],
                amp=settings["amp"],
                checkpoint_every=section["checkpoint_every"],
                seed=settings["seed"],
                loss=network_settings["loss"],
                clip_tau=clipping["tau"],
                clip_patch=clipping["patch"],
            ),
            OptimizerSettings(
                kind=network_settings["optimizer"],
                lr=network_settings["lr"],
                backbone_lr_scale=network_settings["backbone_lr_scale"],
                head_lr_scale=network_settings["head_lr_scale"],
                weight_decay=network_settings["weight_decay"],
                momentum=network_settings["momentum"],
                nesterov=network_settings["nesterov"],
            ),
            mean=network.mean,
            std=network.std,
            device=device,
            work_dir=work_dir,
            on_step=on_step,
        )
        weights = {key: value.detach().cpu().contiguous() for key, value in network.module.state_dict().items()}
        with sealed_directory(out_dir) as tmp:
            save_file(weights, str(tmp / WEIGHTS_FILE))
            (tmp / WEIGHTS_FILE).chmod(0o644)  # safetensors writes 0600, unreadable to teammates sharing the cache
            (tmp / PROVENANCE_FILE).write_text(dumps(provenance))
        with atomic_file(curve_path, "w") as handle:
            handle.write(curve_csv(curve))
    return out_dir
