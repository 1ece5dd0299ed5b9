"""params.yaml validation: every mistake names its key and what is allowed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from wsss_core.params import ParamsError, defaults, load_params

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path, data) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_params_file_is_valid_and_complete():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = load_params(ROOT / "params.yaml")
    assert set(raw) == set(params)  # every section is written out, none left to hidden defaults

    def keys(tree, prefix=""):
        for name, value in tree.items():
            if isinstance(value, dict) and name != "model_cfg":
                yield from keys(value, f"{prefix}{name}.")
            else:
                yield prefix + name

    assert sorted(keys(raw)) == sorted(keys(params))


def test_defaults_fill_missing_keys(tmp_path):
    params = load_params(_write(tmp_path, {"dataset": {"kind": "voc"}}))
    assert params["dataset"]["kind"] == "voc"
    assert params["dataset"]["synthetic"] == defaults()["dataset"]["synthetic"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"dataset": {"knid": "voc"}}, r"dataset\.knid: unknown key; allowed keys: .*kind"),
        ({"datset": {}}, r"datset: unknown section"),
        ({"dataset": {"kind": "pascal"}}, r"dataset\.kind: 'pascal' is not allowed; choose one of: synthetic, voc"),
        ({"dataset": {"synthetic": {"n_train": "many"}}}, r"dataset\.synthetic\.n_train: expected int, got 'many'"),
        ({"dataset": {"synthetic": {"n_train": True}}}, r"dataset\.synthetic\.n_train: expected int, got True"),
        ({"dataset": {"synthetic": {"n_train": 0}}}, r"dataset\.synthetic\.n_train: must be >= 1, got 0"),
        ({"dataset": {"synthetic": {"image_size": [64]}}}, r"image_size: expected a list of 2 values"),
        ({"dataset": {"synthetic": {"image_size": [64, 8]}}}, r"image_size\[1\]: must be >= 32, got 8"),
        ({"evaluate": {"ignore_index": 300}}, r"evaluate\.ignore_index: must be <= 255, got 300"),
        ({"dataset": {"root": None}}, r"dataset\.root: must not be null"),
        ({"dataset": "voc"}, r"dataset: expected a mapping"),
    ],
)
def test_bad_values_name_the_key(tmp_path, data, message):
    with pytest.raises(ParamsError, match=message):
        load_params(_write(tmp_path, data))


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ParamsError, match="nope.yaml: params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("dataset: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


PRESETS = sorted((ROOT / "presets").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_writes_a_valid_complete_params_file(tmp_path, preset):
    from typer.testing import CliRunner

    from wsss_core.cli import app

    out = tmp_path / "params.yaml"
    result = CliRunner().invoke(app, ["params", "preset", str(preset), "--output", str(out)])
    assert result.exit_code == 0, result.output
    params = load_params(out)
    overlay = yaml.safe_load(preset.read_text())
    assert params["dataset"]["kind"] == overlay["dataset"]["kind"]
    assert params["cams"]["box_threshold"] == overlay["cams"]["box_threshold"]
    assert sorted(params["seeds"]["variants"]) == sorted(overlay["seeds"]["variants"])
    assert params["models"]["clip"]["random_init"] is False  # presets are for real weights


def test_clip_es_presets_follow_the_reference():
    voc, coco = (load_params_from_preset(ROOT / "presets" / f"clip_es_{name}.yaml") for name in ("voc", "coco"))
    assert (voc["cams"]["box_threshold"], coco["cams"]["box_threshold"]) == (0.4, 0.7)
    assert (voc["cams"]["background_words"], coco["cams"]["background_words"]) == ("clip_es_voc", "clip_es_coco")
    for params in (voc, coco):
        assert params["cams"]["template"] == "a clean origami {}."
        assert params["cams"]["scales"] == [1.0] and params["cams"]["flip"] is False
        assert params["cams"]["caa_layers"] == 8 and params["cams"]["sinkhorn_rounds"] == 3
        crf = params["seeds"]["variants"]["crf"]["crf"]
        assert (crf["gaussian_sxy"], crf["gaussian_compat"], crf["iterations"]) == (1.0, 3.0, 10)
        assert (crf["bilateral_sxy"], crf["bilateral_srgb"], crf["bilateral_compat"]) == (67.0, 3.0, 4.0)


def load_params_from_preset(path):
    from wsss_core.params import apply_preset

    return apply_preset(path)


def test_preset_with_a_bad_value_names_it(tmp_path):
    from wsss_core.params import apply_preset

    bad = tmp_path / "bad.yaml"
    bad.write_text("cams:\n  box_threshold: high\n")
    with pytest.raises(ParamsError, match=r"bad.yaml: cams\.box_threshold: expected float, got 'high'"):
        apply_preset(bad)


def _float_specs(schema, path=()):
    """(path of keys, spec) of every float parameter, lists of floats included; named maps get an entry `x`."""
    from wsss_core.params import MapOf, Spec

    for name, spec in schema.items():
        if isinstance(spec, dict):
            yield from _float_specs(spec, (*path, name))
        elif isinstance(spec, MapOf):
            yield from _float_specs(spec.schema, (*path, name, "x"))
        elif isinstance(spec, Spec) and float in (spec.type, spec.item):
            yield (*path, name), spec


def _all_float_specs():
    from wsss_core.params import SECTIONS

    return [(section, *path) for section, schema in SECTIONS.items() for path, _ in _float_specs(schema)]


FLOAT_KEYS = _all_float_specs()


def test_the_float_walk_sees_every_ranged_float():
    from wsss_core.params import SECTIONS

    specs = [spec for schema in SECTIONS.values() for _, spec in _float_specs(schema)]
    assert len(specs) > 40 and all(spec.min is not None or spec.max is not None for spec in specs)
    assert ("cams", "box_threshold") in FLOAT_KEYS and ("cams", "scales") in FLOAT_KEYS
    assert ("seeds", "variants", "x", "crf", "confidence") in FLOAT_KEYS


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("path", FLOAT_KEYS, ids=[".".join(p) for p in FLOAT_KEYS])
def test_non_finite_floats_are_rejected_naming_the_key(tmp_path, path, bad):
    from wsss_core.params import SECTIONS

    spec = dict(_float_specs(SECTIONS[path[0]]))[path[1:]]
    value = [bad] * (spec.length or 1) if spec.type is list else bad
    data = node = {}
    for name in path[:-1]:
        node = node.setdefault(name, {})
    node[path[-1]] = value
    key = ".".join(path) + ("[0]" if spec.type is list else "")
    text = yaml.safe_dump(data)
    assert (".nan" if bad != bad else ".inf") in text  # written the way a user would
    with pytest.raises(ParamsError, match=re.escape(f"params.yaml: {key}: must be a finite number, got {bad!r}")):
        load_params(_write(tmp_path, data))


def test_non_finite_float_in_a_preset_is_rejected(tmp_path):
    from wsss_core.params import apply_preset

    bad = tmp_path / "bad.yaml"
    bad.write_text("cams:\n  box_threshold: .nan\n")
    with pytest.raises(ParamsError, match=r"bad.yaml: cams\.box_threshold: must be a finite number, got nan"):
        apply_preset(bad)


def test_params_check_fails_on_nan_naming_the_key(tmp_path):
    from typer.testing import CliRunner

    from wsss_core.cli import app

    path = tmp_path / "params.yaml"
    path.write_text("cams:\n  box_threshold: .nan\n")
    result = CliRunner().invoke(app, ["params", "check", str(path)])
    assert result.exit_code == 1
    assert "cams.box_threshold: must be a finite number, got nan" in result.output


def _preset(tmp_path, *args):
    from typer.testing import CliRunner

    from wsss_core.cli import app

    out = tmp_path / "params.yaml"
    preset = ROOT / "presets" / "clip_es_voc.yaml"
    return CliRunner().invoke(app, ["params", "preset", str(preset), "--output", str(out), *args]), out


def test_preset_refuses_to_overwrite_a_different_params_file(tmp_path):
    out = tmp_path / "params.yaml"
    out.write_text("# my own edits\ncams:\n  box_threshold: 0.5\n")
    result, _ = _preset(tmp_path)
    assert result.exit_code == 1
    assert f"{out} exists and differs" in result.output and "--force" in result.output
    assert out.read_text() == "# my own edits\ncams:\n  box_threshold: 0.5\n"
    assert not (tmp_path / "params.yaml.bak").exists()


def test_preset_with_force_keeps_a_backup_then_writes(tmp_path):
    out = tmp_path / "params.yaml"
    backup = tmp_path / "params.yaml.bak"
    backup.write_text("an older backup\n")
    old = "# my own edits\ncams:\n  box_threshold: 0.5\n"
    out.write_text(old)
    result, _ = _preset(tmp_path, "--force")
    assert result.exit_code == 0, result.output
    assert str(backup) in result.output
    assert backup.read_text() == old  # the older .bak is replaced by the file just overwritten
    assert load_params(out)["cams"]["box_threshold"] == 0.4


def test_preset_leaves_an_identical_params_file_alone(tmp_path):
    result, out = _preset(tmp_path)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    written, mtime = out.read_bytes(), out.stat().st_mtime_ns
    for args in ((), ("--force",)):
        result, _ = _preset(tmp_path, *args)
        assert result.exit_code == 0, result.output
        assert "already matches" in result.output and "wrote" not in result.output
        assert out.read_bytes() == written and out.stat().st_mtime_ns == mtime
        assert not (tmp_path / "params.yaml.bak").exists()
