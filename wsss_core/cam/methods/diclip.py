"""DiCLIP (Yang et al.), training-free: Stable Diffusion's self-attention fused into a frozen CLIP (VCE/ACR), CAMs by
feature surgery, TSA's static retrieval from an SD key-value cache, CAA, and the recursive SD-attention refinement
(wsss_core/cam/diclip/cams.py).

A run reads an sd_cache artifact (`reads: artifacts/sd_cache_<run>`): its keys and values, and the Stable Diffusion
pipeline its masks were made with (its provenance names the directory and the sha256 of every weight file; the same
files must be there), which VCE runs here too. The defaults are the reference's training-free inference
(zwyang6/DiCLIP tools/infer_lam.py with --training_free true): a 320 x 320 input, SD's layer up_blocks[1].attentions[2]
(20 heads; heads 1 and 2 chained) at scheduler step 45 of 50, threshold 0.2, 5 KL rounds, 3 averaging rounds, the
last 3 CLIP blocks fused, retrieval weight 0.5, CAA on the last 6 layers at box threshold 0.88 with 3 Sinkhorn rounds
and t = 2, 10 refinement rounds on up_blocks[3].attentions[1] (heads 1 and 2). Power-1 seeds (background
(1 - max)^1) give its labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsss_core.cam.methods.common import CamGenerator, result_cams, settings_errors
from wsss_core.cam.methods.excel import TEXT_SETTINGS
from wsss_core.params.spec import Schema, Spec

READS = "sd_cache"

# DiCLIP's texts are ExCEL's without the attribute bank.
TEXTS: Schema = {key: spec for key, spec in TEXT_SETTINGS.items() if key != "attribute_top_fraction"}

# How DiCLIP labels an image: the settings shared by the CAM runs and by the sd_cache stage's masks.
KERNEL: Schema = {
    "input_size": Spec(int, 320, "side of the square network input in pixels (DiCLIP: 320, a 20x20 token grid)", min=1),
    "fused_layers": Spec(int, 3, "ACR: the last CLIP blocks given the diffusion-fused dual path", min=1),
    "vce_block": Spec(str, "up_blocks.1.attentions.2", "VCE: the UNet attention block whose q k^T ACR refines"),
    "vce_heads": Spec(list, [1, 2], "ACR: the heads chained by matrix product (0-based)", item=int, min=0),
    "acr_threshold": Spec(float, 0.2, "ACR: entries below this (after /column max) are zeroed", min=0.0, max=1.0),
    "acr_iterations": Spec(int, 5, "ACR: symmetric-KL clustering rounds", min=1),
    "acr_rounds": Spec(int, 3, "ACR: cluster-mean rounds", min=0),
    "timestep_index": Spec(int, 45, "VCE: the scheduler step whose noise level is used (45 of 50: t = 101)", min=0),
    "inference_steps": Spec(int, 50, "VCE: the scheduler's number of steps", min=1),
    "noise_seed": Spec(int, 0, "VCE: seed of the noise (the reference's is unseeded)", min=0),
    "caa": Spec(bool, True, "refine with CAA on the original path's attention (refine_cams_with_aff)"),
    "caa_layers": Spec(int, 6, "layers (the last ones) whose attention CAA uses", min=1),
    "sinkhorn_rounds": Spec(int, 3, "Sinkhorn rounds in CAA", min=0),
    "affinity_power": Spec(int, 2, "power t of the CAA affinity", min=1),
    "box_threshold": Spec(float, 0.88, "CAA box mask threshold (times max)", min=0.0, max=1.0),
    "reference_quirks": Spec(bool, False, "CAA boxes with the reference's 8-bit threshold and clipped box ends"),
    "refine_block": Spec(str, "up_blocks.3.attentions.1", "the UNet attention block the recursive refinement uses"),
    "refine_heads": Spec(list, [1, 2], "recursive refinement: the heads averaged (0-based)", item=int, min=0),
    "refine_iterations": Spec(
        int, 10, "recursive refinement rounds (10 training-free, 5 VOC training); 0: none", min=0
    ),
}

SETTINGS: Schema = {
    **TEXTS,
    **KERNEL,
    "retrieval_weight": Spec(float, 0.5, "TSA: weight of the static retrieval from the cache; 0: none", min=0.0),
}


def diclip_settings(run: dict[str, Any], **overrides: Any):
    """The kernel's `DiclipSettings` from a run's (or an sd_cache run's) settings."""
    from dataclasses import fields

    from wsss_core.cam.diclip.cams import DiclipSettings

    values = {field.name: run[field.name] for field in fields(DiclipSettings) if field.name in run}
    values.update(overrides)
    for name in ("vce_heads", "refine_heads"):
        values[name] = tuple(values[name])
    return DiclipSettings(**values)


def load_cache_diffusion(record: dict[str, Any], device: Any, where: str):
    """The Stable Diffusion pipeline a cache's provenance records (checkpoints.vce), its weight files checked."""
    from wsss_core.models.diffusion import load_sd_pipeline
    from wsss_core.store.table import ArtifactError

    handle = load_sd_pipeline(record["source"], device=device)
    if handle.provenance["files"] != record["files"]:
        changed = sorted(set(handle.provenance["files"].items()) ^ set(record["files"].items()))
        raise ArtifactError(
            f"{where}: the Stable Diffusion weights in {record['source']} are not the ones the cache was made with "
            f"(differing: {sorted({name for name, _ in changed})})"
        )
    return handle


def build(clip: Any, run: dict[str, Any], class_names: tuple[str, ...]) -> CamGenerator:
    from wsss_core.cam.diclip.cache import read_cache
    from wsss_core.cam.diclip.cams import DiclipCams
    from wsss_core.models.clip_text import encode_text
    from wsss_core.prompts.vocabulary import run_prompts

    embed_dim = int(encode_text(clip, ["a"]).shape[1])
    cache, provenance = read_cache(Path(run["reads"]), embed_dim=embed_dim, class_names=class_names)
    sd = load_cache_diffusion(provenance["checkpoints"]["vce"], clip.device, run["reads"])
    with settings_errors("diclip"):
        generator = DiclipCams(
            clip,
            sd,
            *run_prompts(run, class_names, "cams"),
            (cache.keys, cache.values),
            diclip_settings(run, store_resolution=run["store_resolution"]),
        )

    details = {"keys": int(len(cache.keys)), "diffusion": provenance["checkpoints"]["vce"]}
    return CamGenerator(result_cams(generator), clip.patch_size, details)
