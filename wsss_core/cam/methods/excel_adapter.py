"""ExCEL after adapter learning: the CAMs of a trained ExCEL model (`reads: artifacts/adapter_<adapt run>`), as the
reference's CAM inference computes them (tools/infer_lam.py, `--training_free false`; wsss_core/adapter/inference.py):
LVC's dynamic CAMs of the image and its mirror image merged by max, refined by the dynamic CAA (the trained head's
affinity picks and weights the attention layers), box threshold 0.79, at a 320 x 320 input.

The adapter artifact holds the head's weights and the TSE texts it was trained with; its SVC depth is the run's. The
CLIP of `models.clip` must be the one the adapter was trained on (its provenance record is compared).
`lvc: false`, `flip: false`, `box_threshold: 0.75` give the CAMs ExCEL's validation during training reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsss_core.cam.methods.common import CamGenerator, settings_errors
from wsss_core.cam.methods.excel import REFINE_SETTINGS
from wsss_core.params.spec import Schema, Spec

READS = "adapter"

SETTINGS: Schema = {
    "input_size": Spec(int, 320, "side of the square network input in pixels (ExCEL: 320, a 20x20 token grid)", min=1),
    "flip": Spec(bool, True, "also the mirrored image, merged by max (infer_lam's cure_attr_map_flip)"),
    "lvc": Spec(bool, True, "LVC's dynamic CAMs (the trained adapter shifts SVC); false: SVC's static CAMs"),
    "dynamic_caa": Spec(bool, True, "CAA weighted and layer-picked by the head's affinity (seg_attn); false: static"),
    "caa_layers": Spec(int, 6, "layers (the last ones) whose attention CAA uses", min=1),
    "box_threshold": Spec(float, 0.79, "CAA box mask threshold (times max)", min=0.0, max=1.0),
    "reference_quirks": Spec(bool, False, "CAA boxes with the reference's 8-bit threshold and clipped box ends"),
    **REFINE_SETTINGS,
}


def build(clip: Any, run: dict[str, Any], class_names: tuple[str, ...]) -> CamGenerator:
    from wsss_core.adapter.artifact import load_adapter
    from wsss_core.adapter.inference import AdapterCams, InferenceSettings
    from wsss_core.store.table import ArtifactError

    model, provenance = load_adapter(Path(run["reads"]), clip, clip.device)
    trained_on = provenance["details"]["class_names"]
    if list(trained_on) != list(class_names):
        raise ArtifactError(
            f"{run['reads']}: trained for the classes {trained_on}, the dataset has {list(class_names)}"
        )
    keys = ("input_size", "flip", "lvc", "dynamic_caa", "caa_layers", "box_threshold", "reference_quirks", "refine")
    with settings_errors("excel_adapter"):
        settings = InferenceSettings(
            **{key: run[key] for key in keys},
            par_dilations=tuple(run["par_dilations"]),
            par_iterations=run["par_iterations"],
            store_resolution=run["store_resolution"],
        )
        generator = AdapterCams(model, settings)
    variant = ("lvc" if settings.lvc else "svc") + ("+par" if settings.refine == "par" else "")
    return CamGenerator(generator, clip.patch_size, {"variant": variant, "adapter_run": provenance["details"]["run"]})
