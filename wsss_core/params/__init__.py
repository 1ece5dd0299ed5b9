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


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key written twice in one mapping: PyYAML would keep the last one silently, while DVC,
    which reads the same file for its params, refuses it."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: keys written next to it override, by design
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: Path) -> Any:
    """A params or preset file's YAML, a ParamsError naming the file and line where it is not valid."""
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML ({error})") from error


def load_params(path: str | Path = "params.yaml") -> dict[str, dict[str, Any]]:
    """Read and validate the whole params file; every section present is checked, missing ones get defaults."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    raw = read_yaml(path) or {}
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
    overlay = read_yaml(preset_path) or {}
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
