"""ExCEL (Yang et al., CVPR 2025), training-free: CAMs from feature surgery between SVC-calibrated CLIP patch tokens
and TSE-enriched texts, refined by CAA and optionally PAR (wsss_core/cam/excel/).

A run reads the attribute bank of a describe run (`reads: artifacts/descriptions_<run>`): `bank.zarr` holds
`attr_features` (D, B), the KMeans centres of the class descriptions' CLIP text embeddings as columns, and
`attr_flag` (C, B). The defaults are the reference's (zwyang6/ExCEL): the prompt template and topK 0.9
(model/model_excel.py, model/load_attr.py), 5 SVC blocks (reload_self_attn(layers=6) patches blocks -1..-5),
a 320 x 320 input, one scale, no flip (tools/training_free_attr.py), CAA on the last 6 layers with box threshold
0.79, 3 Sinkhorn rounds and t = 2 (utils/affutils.refine_cams_with_aff, compute_trans_mat), PAR with dilations
1, 2, 4, 8, 12, 24 and 20 iterations (PAR(num_iter=20, dilations=[1,2,4,8,12,24])).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsss_core.cam.methods.common import CamGenerator, caa_settings, result_cams, settings_errors
from wsss_core.params.spec import Schema, Spec
from wsss_core.prompts.vocabulary import BACKGROUND_WORD_CHOICES, CLASS_WORD_CHOICES

READS = "descriptions"
BANK = "bank.zarr"

# ExCEL's texts: CLIP-ES's prompt over the class words, enriched by the attribute bank (TSE). Shared with the
# adapt stage's excel method, which trains on the same texts.
TEXT_SETTINGS: Schema = {
    "class_names": Spec(
        str,
        "dataset",
        "words naming the foreground classes: the dataset's names, or CLIP-ES's synonym lists (ExCEL uses them)",
        choices=CLASS_WORD_CHOICES,
    ),
    "background_words": Spec(
        str,
        "clip_es_voc",
        "background vocabulary (ExCEL: CLIP-ES's 25 VOC / 23 COCO words)",
        choices=BACKGROUND_WORD_CHOICES,
    ),
    "template": Spec(str, "a clean origami {}.", "prompt template; {} is replaced by the class words"),
    "attribute_top_fraction": Spec(
        float,
        0.9,
        "TSE: share of the attribute bank kept per class (the lowest int((1 - x) * B) are dropped)",
        min=0.01,
        max=1.0,
    ),
}

PAR_SETTINGS: Schema = {
    "par_dilations": Spec(list, [1, 2, 4, 8, 12, 24], "PAR neighbour dilations", item=int, min=1),
    "par_iterations": Spec(int, 20, "PAR iterations", min=0),
}

# Optional PAR refinement of stored CAMs (this method and excel_adapter).
REFINE_SETTINGS: Schema = {
    "refine": Spec(
        str,
        "none",
        "par: PAR on [background, classes] at image size (needs store_resolution: image); stores each class's "
        "share F / (F + B) against the refined background, so power-1 seeds give the reference's argmax",
        choices=("none", "par"),
    ),
    **PAR_SETTINGS,
}

SETTINGS: Schema = {
    **TEXT_SETTINGS,
    "svc_layers": Spec(int, 5, "SVC: the last blocks given the q-q/k-k/v-v dual path", min=1),
    "input_size": Spec(int, 320, "side of the square network input in pixels (ExCEL: 320, a 20x20 token grid)", min=1),
    "normalization": Spec(
        str, "imagenet", "pixel mean/std: ImageNet's (ExCEL) or the CLIP's own", choices=("imagenet", "clip")
    ),
    "scales": Spec(
        list, [1.0], "input scales, must include 1.0 (reference: single scale); summed", item=float, min=0.1, max=4.0
    ),
    "flip": Spec(bool, False, "also horizontally flipped views, merged by max (reference: no flip)"),
    "caa": Spec(bool, True, "refine with CAA on the original path's attention (ExCEL's refine_cams_with_aff)"),
    **caa_settings(sinkhorn_rounds=3, box_threshold=0.79),
    "caa_layers": Spec(int, 6, "layers (the last ones) whose attention or tokens CAA uses", min=1),
    "reference_quirks": Spec(bool, False, "CAA boxes with the reference's 8-bit threshold and clipped box ends"),
    **REFINE_SETTINGS,
}


def read_attribute_bank(
    directory: Path, *, embed_dim: int, num_foreground: int, class_names: tuple[str, ...] | None = None
):
    """`attr_features` (D, B) float32 of `directory`/bank.zarr, checked against the CLIP and the dataset: D must be
    the CLIP's text embedding width, `attr_flag` must have one row per foreground class, and the foreground class
    names the bank records (its `class_names` attribute, when present) must be `class_names`."""
    import numpy as np
    import zarr

    from wsss_core.store.table import ArtifactError

    path = Path(directory) / BANK
    if not path.is_dir():
        raise ArtifactError(f"{path}: no attribute bank (a describe run writes it)")
    try:
        group = zarr.open_group(str(path), mode="r")
        features = np.asarray(group["attr_features"][...], dtype=np.float32)
        flags = np.asarray(group["attr_flag"][...])
        recorded = group.attrs.get("class_names")
    except (KeyError, TypeError, ValueError, OSError) as error:
        raise ArtifactError(
            f"{path}: not a readable attribute bank with attr_features and attr_flag ({error})"
        ) from None
    if features.ndim != 2 or features.shape[1] == 0:
        raise ArtifactError(f"{path}: attr_features has shape {features.shape}, expected (D, B) with B >= 1")
    if features.shape[0] != embed_dim:
        raise ArtifactError(
            f"{path}: attr_features has D = {features.shape[0]} dims, the CLIP's text embeddings have {embed_dim} "
            "(was the bank encoded with another CLIP?)"
        )
    if flags.ndim != 2 or flags.shape != (num_foreground, features.shape[1]):
        raise ArtifactError(
            f"{path}: attr_flag has shape {flags.shape}, expected ({num_foreground}, {features.shape[1]}): one row per "
            f"foreground class of the dataset ({num_foreground}) and one column per attribute"
        )
    if class_names is not None and recorded is not None and list(recorded) != list(class_names):
        raise ArtifactError(
            f"{path}: the bank was built for the classes {list(recorded)}, the dataset has {list(class_names)}"
        )
    if not np.isfinite(features).all():
        raise ArtifactError(f"{path}: attr_features holds NaN or infinite values")
    return features


def build(clip: Any, run: dict[str, Any], class_names: tuple[str, ...]) -> CamGenerator:
    from dataclasses import fields

    from wsss_core.cam.excel.cams import ExcelCams, ExcelSettings
    from wsss_core.models.clip_text import encode_text
    from wsss_core.prompts.vocabulary import run_prompts

    embed_dim = int(encode_text(clip, ["a"]).shape[1])
    bank = read_attribute_bank(
        Path(run["reads"]),
        embed_dim=embed_dim,
        num_foreground=len(class_names) - 1,
        class_names=tuple(class_names[1:]),
    )
    kernel = {field.name: run[field.name] for field in fields(ExcelSettings) if field.name in run}
    kernel.update(scales=tuple(run["scales"]), par_dilations=tuple(run["par_dilations"]))
    with settings_errors("excel"):
        settings = ExcelSettings(**kernel)
        generator = ExcelCams(
            clip,
            *run_prompts(run, class_names, "cams"),
            bank,
            settings,
        )

    variant = "par" if settings.refine == "par" else ("caa" if settings.caa else "raw")
    return CamGenerator(result_cams(generator), clip.patch_size, {"variant": variant, "attributes": int(bank.shape[1])})
