"""The predict stage's work: run a trained segmenter over the eval split and write its label maps.

`artifacts/predictions_<name>.zarr` (kind "labels", one uint8 map per image at image size) is built resumably like
every dense artifact; its provenance names the segmenter, the eval index (which the evaluate stage scores against)
and, for SAMS, the mask records used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss_core.audit import read_provenance
from wsss_core.data.base import read_image
from wsss_core.params import ParamsError
from wsss_core.provenance import canonical, make_provenance
from wsss_core.segment.networks import Network
from wsss_core.store.dense import DenseMapWriter
from wsss_core.store.scratch import DEFAULT_SCRATCH
from wsss_core.store.table import ArtifactError


def load_segmenter(segmenter_dir: Path, clip_params: dict[str, Any], device: torch.device) -> tuple[Network, dict]:
    """Rebuild the trained network recorded in `segmenter_dir` and load its weights; returns (Network, provenance).

    A network on frozen CLIP features needs the same CLIP it was trained on: `clip_params` (models.clip) must load
    a CLIP whose record equals the one in the segmenter's provenance.
    """
    from safetensors.torch import load_file

    from wsss_core.drivers.retrain import WEIGHTS_FILE
    from wsss_core.models.loading import clip_from_params
    from wsss_core.params.pipeline import CLIP_NETWORKS
    from wsss_core.segment.networks import build_network

    provenance = read_provenance(segmenter_dir)
    if provenance.get("stage") == "adapt":  # an adapter artifact (ExCEL): its WeCLIP head is the segmenter
        from wsss_core.adapter.artifact import load_segmenter as load_adapter_segmenter

        clip = clip_from_params(clip_params, device)
        return load_adapter_segmenter(segmenter_dir, clip, device), provenance
    if provenance.get("stage") != "retrain":
        raise ArtifactError(f"{segmenter_dir}: not a segmenter (written by stage {provenance.get('stage')!r})")
    details = provenance["details"]
    name = details["network"]
    settings = provenance["params"][f"retrain.runs.{details['run']}"]
    clip = None
    if name in CLIP_NETWORKS:
        clip = clip_from_params(clip_params, device)
        recorded = provenance["checkpoints"].get("clip")
        if recorded != canonical(clip.provenance):
            raise ArtifactError(
                f"{segmenter_dir}: trained on CLIP {recorded}, but models.clip now loads {clip.provenance}; "
                f"rerun its stage retrain@{details['run']} or restore models.clip"
            )
    network = build_network(
        name, settings[name], len(details["class_names"]), clip=clip, device=device, pretrained=False
    )
    weights_path = segmenter_dir / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ArtifactError(f"{weights_path}: segmenter weights not found")
    try:
        network.module.load_state_dict(load_file(str(weights_path), device=str(device)))
    except RuntimeError as error:
        raise ArtifactError(f"{weights_path}: does not fit network {name!r} ({error})") from error
    network.module.eval()
    return network, provenance


def check_prediction_settings(name: str, settings: dict[str, Any]) -> None:
    """Cross-key checks params validation cannot express, named by their key."""
    key = f"retrain.predict.variants.{name}"
    if settings["window"] and not 0 < settings["stride"] <= settings["window"]:
        raise ParamsError(f"{key}.stride: must lie in 1..window ({settings['window']}), got {settings['stride']}")
    stray = [scale for scale in settings["unflipped_scales"] if scale not in settings["scales"]]
    if stray:
        raise ParamsError(f"{key}.unflipped_scales: {stray[0]} is not one of the scales {settings['scales']}")


@dataclass(frozen=True)
class PredictJob:
    """The trained segmenter in `segmenter_dir` with one prediction variant's inference and post-processing."""

    segmenter_dir: Path
    clip_params: dict[str, Any]
    settings: dict[str, Any]

    def build(self, device: str) -> _PredictWorker:
        from wsss_core.models import resolve_device

        torch_device = resolve_device(device)
        network, _ = load_segmenter(self.segmenter_dir, self.clip_params, torch_device)
        return _PredictWorker(network, self.settings, torch_device)


class _PredictWorker:
    details: dict[str, Any] = {}  # the segmenter is named by its artifact, which the provenance lists upstream

    def __init__(self, network: Network, settings: dict[str, Any], device: torch.device) -> None:
        from wsss_core.segment.infer import InferenceSettings

        self.network, self.settings, self.device = network, settings, device
        self.inference = InferenceSettings(
            scales=tuple(settings["scales"]),
            flip=settings["flip"],
            unflipped_scales=tuple(settings["unflipped_scales"]),
            resize=settings["resize"],
            input_size=settings["input_size"],
            merge=settings["merge"],
            window=settings["window"],
            stride=settings["stride"],
            amp=settings["amp"],
        )

    def __call__(self, item: tuple[np.ndarray, Any]) -> np.ndarray:
        from wsss_core.segment.infer import predict_probabilities
        from wsss_core.segment.postprocess import postprocess

        image, masks = item
        network = self.network
        probabilities = predict_probabilities(
            network.module, image, network.mean, network.std, self.inference, self.device
        )
        return postprocess(
            probabilities,
            self.settings["postprocess"],
            image=image,
            crf_options=self.settings["crf"],
            masks=masks,
            alpha=self.settings["sams"]["alpha"],
        )


def write_predictions(
    params: dict[str, Any],
    name: str,
    segmenter_dir: Path,
    index_path: Path,
    out_path: Path,
    *,
    scratch_root: Path = DEFAULT_SCRATCH,
) -> Path:
    """Predict every image of `index_path` with variant `retrain.predict.variants.<name>`; write `out_path`."""
    from wsss_core.data.index import read_index, read_index_hashes, read_index_sizes
    from wsss_core.engine import open_engine

    variants = params["retrain"]["predict"]["variants"]
    if name not in variants:
        raise ParamsError(f"retrain.predict.variants.{name}: no such variant; defined: {', '.join(variants)}")
    settings = variants[name]
    check_prediction_settings(name, settings)
    dataset = read_index(index_path)
    size_of, image_hashes = read_index_sizes(index_path), read_index_hashes(index_path)
    upstream: dict[str, Path] = {"segmenter": segmenter_dir, "index": index_path}
    masks_source = None
    if settings["postprocess"] == "sams":
        masks_root = Path(settings["reads"])
        masks_source = open_masks(masks_root, name, index_path, dataset.split)
        upstream["masks"] = masks_root / dataset.split
    job = PredictJob(segmenter_dir, params["models"]["clip"], settings)
    with open_engine(params["engine"], job, params["retrain"]["device"], f"predict {name}") as running:
        segmenter_provenance = read_provenance(segmenter_dir)  # checked by the workers' load_segmenter
        if list(dataset.class_names) != segmenter_provenance["details"]["class_names"]:
            raise ArtifactError(f"{index_path}: class names differ from those {segmenter_dir} was trained on")
        provenance = make_provenance(
            "predict",
            {f"retrain.predict.variants.{name}": settings},
            upstream=upstream,
            libraries=("pydensecrf2",) if settings["postprocess"] == "crf" else (),
            details={"variant": name, "split": dataset.split, "network": segmenter_provenance["details"]["network"]},
        )
        image_ids = [sample.image_id for sample in dataset.samples]
        writer = DenseMapWriter(
            out_path,
            kind="labels",
            image_ids=image_ids,
            sizes=np.array([size_of[image_id] for image_id in image_ids]),
            dtype="uint8",
            class_names=dataset.class_names,
            image_sha256=[image_hashes[image_id] for image_id in image_ids],
            provenance=provenance,
            scratch_root=scratch_root,
        )

        def load(index: int) -> tuple[np.ndarray, Any]:
            sample = dataset.samples[index]
            return read_image(sample.image_path), None if masks_source is None else masks_source(sample.image_id)

        running.run(writer.pending(), load, writer.write, image_ids)
    return writer.commit()


def open_masks(root: Path, name: str, index_path: Path, split: str):
    """A function image_id -> that image's SAM masks, from the `split` directory of the sam_masks artifact `root`,
    after checking the masks were computed for exactly these images (same ids and content hashes)."""
    key = f"retrain.predict.variants.{name}.reads"
    split_dir = root / split
    if not split_dir.is_dir():
        raise ArtifactError(
            f"{key}: {split_dir} not found; sams post-processing needs the sam_masks artifact of the {split!r} "
            "split (its sam_masks run needs eval_split: true; or choose postprocess none / crf)"
        )
    from wsss_core.masks.records import MaskSet

    masks = MaskSet(split_dir)
    masks.check_index(index_path)
    return masks.read
