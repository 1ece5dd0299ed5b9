"""DiCLIP after adapter learning: the CAMs of a trained DiCLIP model (`reads: artifacts/adapter_<adapt run>` of method
diclip), as the reference's CAM inference computes them (tools/infer_lam.py without `--training_free`): the
training-free pipeline (wsss_core/cam/diclip/cams.py) with the trained dynamic adapter's ReLU'd maps fused into the
patch-text CAM (the adapt run's weight, 0.1) instead of the static retrieval, CAA at 0.88 without the head's affinity,
10 refinement rounds.

VCE, ACR and the fusion depth are the adapt run's (the adapter was trained on those features); the SD pipeline is the
one the adapter's provenance records, its weight files checked. The CLIP of `models.clip` must be the adapter's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsss_core.cam.methods.common import CamGenerator, result_cams, settings_errors
from wsss_core.cam.methods.diclip import KERNEL
from wsss_core.params.spec import Schema

READS = "adapter"

# What inference may choose; everything else comes from the adapt run.
INFERENCE_KEYS = ("input_size", "caa", "caa_layers", "sinkhorn_rounds", "affinity_power", "box_threshold")
INFERENCE_KEYS += ("reference_quirks", "refine_iterations")
SETTINGS: Schema = {key: KERNEL[key] for key in INFERENCE_KEYS}


def build(clip: Any, run: dict[str, Any], class_names: tuple[str, ...]) -> CamGenerator:
    from wsss_core.adapter.artifact import load_adapter, run_settings
    from wsss_core.cam.diclip.cams import DiclipCams
    from wsss_core.cam.methods.diclip import diclip_settings, load_cache_diffusion
    from wsss_core.prompts.vocabulary import run_prompts
    from wsss_core.store.table import ArtifactError

    model, provenance = load_adapter(Path(run["reads"]), clip, clip.device)
    details = provenance["details"]
    if details["method"] != "diclip":
        raise ArtifactError(f"{run['reads']}: an adapter of method {details['method']!r}, not diclip")
    if list(details["class_names"]) != list(class_names):
        raise ArtifactError(
            f"{run['reads']}: trained for the classes {details['class_names']}, the dataset has {list(class_names)}"
        )
    trained = run_settings(provenance)
    sd = load_cache_diffusion(provenance["checkpoints"]["vce"], clip.device, run["reads"])
    with settings_errors("diclip_adapter"):
        generator = DiclipCams(
            clip,
            sd,
            *run_prompts(trained, class_names, f"adapt.runs.{details['run']}"),
            None,
            diclip_settings(
                trained,
                **{key: run[key] for key in INFERENCE_KEYS},
                retrieval_weight=0.0,
                store_resolution=run["store_resolution"],
            ),
            adapter=(model.adapter, trained["dynamic_cam_weight"]),
        )

    return CamGenerator(result_cams(generator), clip.patch_size, {"variant": "dynamic", "adapter_run": details["run"]})
