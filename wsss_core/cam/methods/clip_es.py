"""CLIP-ES (Lin et al., CVPR 2023): training-free Softmax-GradCAM on a frozen CLIP, refined by CAA.

A run stores the raw Grad-CAM (`refine: none`) or its CAA refinement (`refine: caa`); the reference's defaults are
the ones below (docs/methods.md: single scale, no flip, 8 CAA layers, 3 Sinkhorn rounds, t = 2, box threshold 0.4 VOC /
0.7 COCO, CLIP run in half precision).
"""

from __future__ import annotations

from typing import Any

from wsss_core.cam.methods.common import CamGenerator, caa_settings
from wsss_core.params.spec import Schema, Spec
from wsss_core.prompts.vocabulary import BACKGROUND_WORD_CHOICES, CLASS_WORD_CHOICES

READS = None

SETTINGS: Schema = {
    "refine": Spec(
        str, "caa", "store the CAA-refined CAM (caa) or the raw Softmax-GradCAM (none)", choices=("caa", "none")
    ),
    "class_names": Spec(
        str,
        "dataset",
        "words naming the foreground classes: the dataset's names, or CLIP-ES's synonym lists",
        choices=CLASS_WORD_CHOICES,
    ),
    "background_words": Spec(
        str, "clip_es_voc", "background vocabulary (25 VOC / 23 COCO words)", choices=BACKGROUND_WORD_CHOICES
    ),
    "template": Spec(str, "a clean origami {}.", "prompt template; {} is replaced by the class words"),
    "scales": Spec(list, [1.0], "image scales averaged (reference: single scale)", item=float, min=0.1, max=4.0),
    "flip": Spec(bool, False, "also average horizontally flipped views (reference: no flip)"),
    **caa_settings(sinkhorn_rounds=3, box_threshold=0.4),
    "reference_quirks": Spec(bool, False, "reproduce CLIP-ES's 8-bit box threshold and clipped box ends"),
    "gradcam_normalization": Spec(
        str,
        "once",
        "once: one min-max of the Grad-CAM; clip_es: twice, as CLIP-ES's pytorch_grad_cam (stretches near-flat maps)",
        choices=("once", "clip_es"),
    ),
    "fp16_positional_embedding": Spec(
        bool, False, "round the positional embedding through float16, as CLIP-ES's half-precision CLIP does"
    ),
    "amp": Spec(bool, True, "fp16 autocast on CUDA (the reference ran CLIP in half precision)"),
}


def build(clip: Any, run: dict[str, Any], class_names: tuple[str, ...]) -> CamGenerator:
    from dataclasses import fields

    from wsss_core.cam.clip_es import ClipEs, ClipEsSettings
    from wsss_core.prompts.vocabulary import run_prompts

    kernel = {field.name: run[field.name] for field in fields(ClipEsSettings) if field.name in run}
    settings = ClipEsSettings(**{**kernel, "scales": tuple(run["scales"])})
    generator = ClipEs(
        clip,
        *run_prompts(run, class_names, "cams"),
        settings,
    )
    refined = run["refine"] == "caa"

    def cams(image, class_ids):
        result = generator(image, class_ids)
        return result.class_ids, result.refined if refined else result.raw

    return CamGenerator(cams, clip.patch_size, {"variant": "caa" if refined else "raw"})
