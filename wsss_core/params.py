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


Schema = dict[str, "Spec | Schema"]

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

EVALUATE: Schema = {
    "ignore_index": Spec(
        int, 255, "label value skipped in GT and counted as unlabelled in predictions", min=0, max=255
    ),
}

SECTIONS: dict[str, Schema] = {
    "dataset": DATASET,
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
