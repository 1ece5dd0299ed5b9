"""params.yaml: one section per stage, validated on load (`load_params`), and checked as a whole pipeline
(`wsss_core.params.pipeline`): every artifact a stage reads is made by a stage of the same params.

The sections are declared in `schema`, the schema language in `spec`. `schema` is imported on first use: it reads
the CAM method registry, whose modules declare their settings in the schema language of `spec`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from wsss_core.params.spec import MapOf, ParamsError, Schema, Spec, validate_section

__all__ = [
    "SECTIONS",
    "MapOf",
    "ParamsError",
    "Schema",
    "Spec",
    "apply_preset",
    "defaults",
    "load_params",
    "merge",
    "require_entry",
    "validate_section",
]


def __getattr__(name: str) -> Any:
    if name == "SECTIONS":
        from wsss_core.params.schema import SECTIONS

        return SECTIONS
    raise AttributeError(name)


def _sections() -> dict[str, Schema]:
    from wsss_core.params.schema import SECTIONS

    return SECTIONS


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
    unknown = sorted(set(raw) - set(_sections()))
    if unknown:
        raise ParamsError(f"{path}: {unknown[0]}: unknown section; allowed: {', '.join(_sections())}")
    return {
        name: validate_section(raw.get(name), schema, f"{path.name}: {name}") for name, schema in _sections().items()
    }


def defaults() -> dict[str, dict[str, Any]]:
    return {name: validate_section({}, schema, name) for name, schema in _sections().items()}


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overlay`'s values written over it, recursively for nested sections.

    A stage family (seeds.variants, cams.runs, ...) is replaced as a whole: a preset lists exactly the stages it wants.
    """
    result = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict) and key not in ("variants", "runs"):
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
    unknown = sorted(set(overlay) - set(_sections()))
    if unknown:
        raise ParamsError(f"{preset_path}: {unknown[0]}: unknown section; allowed: {', '.join(_sections())}")
    merged = merge(defaults(), overlay)
    return {
        name: validate_section(merged[name], schema, f"{preset_path.name}: {name}")
        for name, schema in _sections().items()
    }


def require_entry(params: dict[str, Any], family: str, name: str) -> dict[str, Any]:
    """The entry `name` of the stage family at dotted path `family` (e.g. "cams.runs"), or a ParamsError naming it."""
    entries = params
    for part in family.split("."):
        entries = entries[part]
    if name not in entries:
        defined = ", ".join(entries) or "none"
        raise ParamsError(f"{family}.{name}: no such entry; defined: {defined}")
    return entries[name]
