"""params.yaml: one section per stage, validated on load.

Every key the pipeline reads is declared here with its type, default, allowed values and meaning, so a typo
or a wrong value fails at once with a message naming the key, instead of silently falling back to a default
deep inside a stage. Sections are plain dicts of `Spec`s (nested dicts for sub-sections).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ParamsError(ValueError):
    pass


@dataclass(frozen=True)
class Spec:
    """One parameter: its type (int, float, str, bool, list), default and constraints."""

    type: type
    default: Any
    help: str
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    item: type | None = None  # element type of a list
    length: int | None = None  # exact length of a list
    nullable: bool = False


@dataclass(frozen=True)
class MapOf:
    """A mapping from names the user chooses (e.g. seed variants) to sections that share one schema."""

    schema: dict
    default: dict
    help: str


Schema = dict[str, "Spec | MapOf | Schema"]

DATASET: Schema = {
    "kind": Spec(str, "synthetic", "dataset layout", choices=("synthetic", "voc", "coco", "folder")),
    "root": Spec(str, "data/demo", "dataset root directory (for synthetic: where the demo data is generated)"),
    "train_split": Spec(str, "train", "split whose seeds are generated from image-level labels"),
    "eval_split": Spec(str, "val", "split on which final predictions are evaluated"),
    "label_source": Spec(
        str,
        "gt_masks",
        "where image-level labels come from; papers differ, so it is recorded in provenance",
        choices=("gt_masks", "xml", "csv"),
    ),
    "synthetic": {
        "n_train": Spec(int, 60, "generated training images", min=1),
        "n_val": Spec(int, 30, "generated validation images", min=1),
        "image_size": Spec(list, [128, 128], "height, width of generated images", item=int, length=2, min=32),
        "seed": Spec(int, 0, "generator seed", min=0),
        "min_objects": Spec(int, 1, "fewest objects per image", min=1),
        "max_objects": Spec(int, 3, "most objects per image", min=1),
    },
}

MODELS: Schema = {
    "clip": {
        "arch": Spec(str, "ViT-B-16", "open_clip architecture"),
        "pretrained": Spec(str, "openai", "open_clip pretrained tag (downloads once when online)", nullable=True),
        "checkpoint": Spec(str, None, "local weights file; takes precedence over downloading", nullable=True),
        "sha256": Spec(str, None, "expected sha256 of the checkpoint file", nullable=True),
        "model_cfg": Spec(
            dict, None, "open_clip config (embed_dim, vision_cfg, text_cfg) of a custom architecture", nullable=True
        ),
        "random_init": Spec(bool, False, "random weights on purpose (tests, demos without weights)"),
        "seed": Spec(int, 0, "seed of random weights", min=0),
    },
}

CAMS: Schema = {
    "method": Spec(str, "clip_es", "CAM generator", choices=("clip_es",)),
    "device": Spec(str, "auto", "auto (CUDA when present), cpu, cuda, cuda:N"),
    "class_names": Spec(
        str,
        "dataset",
        "words naming the foreground classes: the dataset's names, or CLIP-ES's synonym lists",
        choices=("dataset", "clip_es_voc", "clip_es_coco"),
    ),
    "background_words": Spec(
        str,
        "clip_es_voc",
        "background vocabulary (25 VOC / 23 COCO words)",
        choices=("clip_es_voc", "clip_es_coco", "none"),
    ),
    "template": Spec(str, "a clean origami {}.", "prompt template; {} is replaced by the class words"),
    "scales": Spec(list, [1.0], "image scales averaged (reference: single scale)", item=float, min=0.1, max=4.0),
    "flip": Spec(bool, False, "also average horizontally flipped views (reference: no flip)"),
    "caa_layers": Spec(int, 8, "attention layers (the last ones) used by CAA", min=1),
    "sinkhorn_rounds": Spec(int, 3, "Sinkhorn rounds in CAA", min=0),
    "affinity_power": Spec(int, 2, "power t of the CAA affinity", min=1),
    "box_threshold": Spec(float, 0.4, "CAA box mask threshold (times max): 0.4 VOC, 0.7 COCO", min=0.0, max=1.0),
    "reference_quirks": Spec(bool, False, "reproduce CLIP-ES's 8-bit box threshold and clipped box ends"),
    "amp": Spec(bool, True, "fp16 autocast on CUDA (the reference ran CLIP in half precision)"),
    "store_resolution": Spec(
        str, "feature", "CAMs stored on the token grid or upsampled to image size", choices=("feature", "image")
    ),
}

SEED_VARIANT: Schema = {
    "cams": Spec(str, "cams_caa", "CAM artifact the seeds come from", choices=("cams_raw", "cams_caa")),
    "background": Spec(
        str, "power", "background score: (1 - max CAM)^value, or a constant", choices=("power", "threshold")
    ),
    "background_value": Spec(float, 1.0, "alpha (power) or the constant (threshold)", min=0.0),
    "crf": {
        "enabled": Spec(bool, False, "refine with a dense CRF (pydensecrf)"),
        "iterations": Spec(int, 10, "mean-field iterations", min=1),
        "gaussian_sxy": Spec(float, 1.0, "Gaussian kernel spatial std", min=0.0),
        "gaussian_compat": Spec(float, 3.0, "Gaussian kernel weight", min=0.0),
        "bilateral_sxy": Spec(float, 67.0, "bilateral kernel spatial std", min=0.0),
        "bilateral_srgb": Spec(float, 3.0, "bilateral kernel colour std", min=0.0),
        "bilateral_compat": Spec(float, 4.0, "bilateral kernel weight", min=0.0),
        "confidence": Spec(float, 0.95, "pixels whose CRF probability is below this become 255", min=0.0, max=1.0),
    },
}

SEEDS: Schema = {
    "variants": MapOf(
        SEED_VARIANT,
        {
            "cam": {"cams": "cams_raw"},
            "caa": {"cams": "cams_caa"},
            "crf": {"cams": "cams_caa", "crf": {"enabled": True}},
        },
        "named seed variants; each becomes artifacts/seeds_<name>.zarr and is evaluated",
    ),
}

EVALUATE: Schema = {
    "ignore_index": Spec(
        int, 255, "label value skipped in GT and counted as unlabelled in predictions", min=0, max=255
    ),
    "oracle_background_powers": Spec(
        list,
        [0.5, 1.0, 2.0, 3.0],
        "for seeds made from CAMs: also report the best background power chosen WITH GT, flagged as oracle",
        item=float,
        min=0.0,
    ),
}

SECTIONS: dict[str, Schema] = {
    "dataset": DATASET,
    "models": MODELS,
    "cams": CAMS,
    "seeds": SEEDS,
    "evaluate": EVALUATE,
}


def _check_value(value: Any, spec: Spec, key: str) -> Any:
    if value is None:
        if spec.nullable:
            return None
        raise ParamsError(f"{key}: must not be null ({spec.help})")
    if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (spec.type is int and isinstance(value, bool)) or not isinstance(value, spec.type):
        raise ParamsError(f"{key}: expected {spec.type.__name__}, got {value!r} ({type(value).__name__})")
    if spec.type is list:
        if spec.length is not None and len(value) != spec.length:
            raise ParamsError(f"{key}: expected a list of {spec.length} values, got {value!r}")
        return (
            [
                _check_value(v, Spec(spec.item, None, spec.help, min=spec.min, max=spec.max), f"{key}[{i}]")
                for i, v in enumerate(value)
            ]
            if spec.item
            else list(value)
        )
    if spec.choices is not None and value not in spec.choices:
        allowed = ", ".join(map(str, spec.choices))
        raise ParamsError(f"{key}: {value!r} is not allowed; choose one of: {allowed}")
    if spec.min is not None and value < spec.min:
        raise ParamsError(f"{key}: must be >= {spec.min}, got {value!r}")
    if spec.max is not None and value > spec.max:
        raise ParamsError(f"{key}: must be <= {spec.max}, got {value!r}")
    return value


def validate_section(raw: Any, schema: Schema, where: str) -> dict[str, Any]:
    """Check `raw` against `schema`; return it with defaults filled in. `where` prefixes error messages."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ParamsError(f"{where}: expected a mapping, got {raw!r}")
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        allowed = ", ".join(sorted(schema))
        raise ParamsError(f"{where}.{unknown[0]}: unknown key; allowed keys: {allowed}")
    result = {}
    for name, spec in schema.items():
        key = f"{where}.{name}"
        if isinstance(spec, dict):
            result[name] = validate_section(raw.get(name), spec, key)
        elif isinstance(spec, MapOf):
            entries = spec.default if raw.get(name) is None else raw[name]
            if not isinstance(entries, dict) or not entries:
                raise ParamsError(f"{key}: expected a non-empty mapping of names to sections ({spec.help})")
            for entry in entries:
                if not (isinstance(entry, str) and entry.isidentifier()):
                    raise ParamsError(f"{key}: name {entry!r} must be a plain identifier (letters, digits, _)")
            result[name] = {
                entry: validate_section(value, spec.schema, f"{key}.{entry}") for entry, value in entries.items()
            }
        else:
            result[name] = _check_value(raw.get(name, spec.default), spec, key)
    return result


def load_params(path: str | Path = "params.yaml") -> dict[str, dict[str, Any]]:
    """Read and validate the whole params file; every section present is checked, missing ones get defaults."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ParamsError(f"{path}: {unknown[0]}: unknown section; allowed: {', '.join(SECTIONS)}")
    return {name: validate_section(raw.get(name), schema, f"{path.name}: {name}") for name, schema in SECTIONS.items()}


def defaults() -> dict[str, dict[str, Any]]:
    return {name: validate_section({}, schema, name) for name, schema in SECTIONS.items()}


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overlay`'s values written over it, recursively for nested sections.

    A named map (e.g. seeds.variants) is replaced as a whole: a preset lists exactly the variants it wants.
    """
    result = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict) and key != "variants":
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


def apply_preset(preset_path: str | Path) -> dict[str, dict[str, Any]]:
    """Every section with defaults filled in, overridden by the preset file's values, validated."""
    preset_path = Path(preset_path)
    if not preset_path.is_file():
        raise ParamsError(f"{preset_path}: preset file not found")
    overlay = yaml.safe_load(preset_path.read_text()) or {}
    if not isinstance(overlay, dict):
        raise ParamsError(f"{preset_path}: expected a mapping of sections")
    unknown = sorted(set(overlay) - set(SECTIONS))
    if unknown:
        raise ParamsError(f"{preset_path}: {unknown[0]}: unknown section; allowed: {', '.join(SECTIONS)}")
    merged = merge(defaults(), overlay)
    return {
        name: validate_section(merged[name], schema, f"{preset_path.name}: {name}") for name, schema in SECTIONS.items()
    }
