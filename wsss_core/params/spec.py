"""The schema language of params.yaml: `Spec` (one key), nested dicts (sub-sections), `MapOf` (a stage family),
and `validate_section`, which checks a raw section against its schema and fills in defaults."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ParamsError(ValueError):
    pass


@dataclass(frozen=True)
class Spec:
    """One parameter: its type (int, float, str, bool, list), default and constraints.

    Float values must be finite: NaN and +-infinity are rejected for every float (no parameter takes them).
    """

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
    """A stage family: names the user chooses (seed variants, CAM runs, ...) mapped to sections. dvc.yaml runs one
    stage per entry (`foreach`), so an empty or absent mapping gives no stage at all.

    Every entry follows `schema`; with `kind_key`, an entry also names its kind under that key (the CAM method of a
    run, the task of a learning run) and follows `kinds[kind]` as well: each kind declares its own settings once.
    """

    schema: dict
    help: str
    kind_key: str | None = None
    kinds: Mapping[str, dict] | None = None

    def entry_schema(self, entry: Any, where: str) -> dict:
        if self.kind_key is None:
            return self.schema
        if not isinstance(entry, dict):
            raise ParamsError(f"{where}: expected a mapping, got {entry!r}")
        kind = entry.get(self.kind_key)
        if kind not in self.kinds:
            allowed = ", ".join(self.kinds)
            raise ParamsError(f"{where}.{self.kind_key}: {kind!r} is not one of: {allowed}")
        choice = Spec(str, None, self.help, choices=tuple(self.kinds))
        return {self.kind_key: choice, **self.schema, **self.kinds[kind]}


Schema = dict[str, "Spec | MapOf | Schema"]


def field_default(schema: Schema, key: str) -> Any:
    """The default of `schema[key]` as a frozen dataclass field holds it: a list default as a tuple. Kernels' settings
    classes read their defaults from their method's schema this way, so each is written once."""
    value = schema[key].default
    return tuple(value) if isinstance(value, list) else value


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
    if spec.type is float and not math.isfinite(value):
        # NaN compares False with every bound, so it would slip past min/max; no parameter takes infinity either.
        raise ParamsError(f"{key}: must be a finite number, got {value!r}")
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
            entries = {} if raw.get(name) is None else raw[name]
            if not isinstance(entries, dict):
                raise ParamsError(f"{key}: expected a mapping of names to sections ({spec.help})")
            for entry in entries:
                if not (isinstance(entry, str) and entry.isidentifier()):
                    raise ParamsError(f"{key}: name {entry!r} must be a plain identifier (letters, digits, _)")
            result[name] = {
                entry: validate_section(value, spec.entry_schema(value, f"{key}.{entry}"), f"{key}.{entry}")
                for entry, value in entries.items()
            }
        else:
            result[name] = _check_value(raw.get(name, spec.default), spec, key)
    return result
