"""params.yaml validation: every mistake names its key and what is allowed."""

from __future__ import annotations

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
