"""FMA-WSSS (Yang et al., WACV 2024): CAMs from learned prompts (artifacts/prompts_<learn run>), refined by CAA.

FMA-WSSS's VOC settings: the classification prompts' CAMs refined on the normalised score with box threshold 0.4
(`refine: score`), the segmentation prompts' on the raw CAM with 0.5 (`refine: cam`); COCO's segmentation CAMs are not
refined (`refine: none`); one Sinkhorn round, t = 2 (wsss_core/cam/learned.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsss_core.cam.methods.common import CamGenerator, caa_settings
from wsss_core.params.spec import Schema, Spec

READS = "prompts"

SETTINGS: Schema = {
    **caa_settings(sinkhorn_rounds=1, box_threshold=0.4),
    "refine": Spec(
        str,
        "score",
        "CAA applied to the normalised score, to the raw CAM, or not at all",
        choices=("score", "cam", "none"),
    ),
    "reference_quirks": Spec(
        bool, False, "reproduce the 8-bit box threshold and clipped box ends of FMA-WSSS's (CLIP-ES's) box code"
    ),
}


def build(clip: Any, run: dict[str, Any], class_names: tuple[str, ...]) -> CamGenerator:
    from dataclasses import fields

    from wsss_core.cam.learned import LearnedCamSettings, LearnedPromptCams
    from wsss_core.prompts.fma import load_prompts
    from wsss_core.store.table import ArtifactError

    prompts_dir = Path(run["reads"])
    prompts = load_prompts(clip, prompts_dir)
    if prompts.num_foreground != len(class_names) - 1:
        raise ArtifactError(
            f"{prompts_dir}: prompts name {prompts.num_foreground} classes, the dataset has {len(class_names) - 1}"
        )
    kernel = {field.name: run[field.name] for field in fields(LearnedCamSettings)}  # every field is a run setting
    generator = LearnedPromptCams(clip, prompts, LearnedCamSettings(**kernel))

    def cams(image, class_ids):
        result = generator(image, class_ids)
        return result.class_ids, result.refined

    variant = "caa" if run["refine"] != "none" else "raw"
    return CamGenerator(cams, clip.patch_size, {"variant": variant, "prompt_design": prompts.design})
