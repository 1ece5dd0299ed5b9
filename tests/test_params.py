"""params.yaml validation: every mistake names its key and what is allowed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import small_params
from wsss_core.params import ParamsError, apply_preset, defaults, load_params

ROOT = Path(__file__).resolve().parents[1]

# The stage families (MapOf): one DVC stage per entry.
FAMILIES = (
    ("sam_masks", "runs"),
    ("describe", "runs"),
    ("learn", "runs"),
    ("adapt", "runs"),
    ("cams", "runs"),
    ("seeds", "variants"),
    ("seeds", "sams", "variants"),
    ("retrain", "runs"),
    ("retrain", "predict", "variants"),
)


def _family(params: dict, path: tuple[str, ...]) -> dict:
    for name in path:
        params = params.get(name) or {}
    return params


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


def test_shipped_params_describe_a_pipeline_whose_every_read_is_made(tmp_path):
    from wsss_core.params.pipeline import pipeline_problems

    params = load_params(ROOT / "params.yaml")
    assert pipeline_problems(params, files=False) == []
    # data/demo and the demo CLIP are made by demo/dvc.yaml, so no file needs to exist yet but the files the
    # repository ships (the demo's class descriptions)
    shutil.copytree(ROOT / "data" / "descriptions", tmp_path / "data" / "descriptions")
    assert pipeline_problems(params, files=True, root=tmp_path) == []


def test_defaults_fill_missing_keys(tmp_path):
    params = load_params(_write(tmp_path, {"dataset": {"kind": "voc"}}))
    assert params["dataset"]["kind"] == "voc"
    assert params["dataset"]["root"] == defaults()["dataset"]["root"]  # a missing key of a given section
    assert params["demo"]["data"] == defaults()["demo"]["data"]  # a missing section
    assert params["demo"]["data"]["n_train"] == 60


def test_stage_families_default_to_no_stage_at_all(tmp_path):
    # There is no default variant map any more: an absent family gives no stage (a preset lists exactly its stages).
    for params in (defaults(), load_params(_write(tmp_path, {"dataset": {"kind": "voc"}}))):
        assert all(_family(params, path) == {} for path in FAMILIES)
    params = load_params(_write(tmp_path, {"seeds": {"variants": None, "sams": {}}, "cams": {"runs": {}}}))
    assert params["seeds"]["variants"] == {} and params["seeds"]["sams"]["variants"] == {}
    assert params["cams"]["runs"] == {}


def test_an_entry_gets_the_defaults_of_its_family():
    from wsss_core.params import SECTIONS, validate_section

    seeds = validate_section({"variants": {"mine": {"cams": "cams_caa"}}}, SECTIONS["seeds"], "seeds")
    assert seeds["variants"]["mine"]["background"] == "power" and seeds["variants"]["mine"]["crf"]["enabled"] is False


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"dataset": {"knid": "voc"}}, r"dataset\.knid: unknown key; allowed keys: .*kind"),
        ({"datset": {}}, r"datset: unknown section"),
        ({"dataset": {"kind": "pascal"}}, r"dataset\.kind: 'pascal' is not allowed; choose one of: synthetic, voc"),
        ({"demo": {"data": {"n_train": "many"}}}, r"demo\.data\.n_train: expected int, got 'many'"),
        ({"demo": {"data": {"n_train": True}}}, r"demo\.data\.n_train: expected int, got True"),
        ({"demo": {"data": {"n_train": 0}}}, r"demo\.data\.n_train: must be >= 1, got 0"),
        ({"demo": {"data": {"image_size": [64]}}}, r"demo\.data\.image_size: expected a list of 2 values"),
        ({"demo": {"data": {"image_size": [64, 8]}}}, r"demo\.data\.image_size\[1\]: must be >= 32, got 8"),
        ({"dataset": {"synthetic": {"n_train": 6}}}, r"dataset\.synthetic: unknown key"),  # moved to demo.data
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


def test_a_key_written_twice_is_refused_with_its_line(tmp_path):
    # PyYAML alone keeps the last value; DVC, reading the same file, refuses it
    bad = tmp_path / "params.yaml"
    bad.write_text("seeds:\n  variants:\n    cam:\n      cams: cams_raw\n      cams: cams_caa\n")
    with pytest.raises(ParamsError, match=r"duplicate key 'cams'[\s\S]*line 5"):
        load_params(bad)
    preset = tmp_path / "preset.yaml"
    preset.write_text("dataset: {kind: voc}\ndataset: {kind: coco}\n")
    with pytest.raises(ParamsError, match="preset.yaml: not valid YAML .*duplicate key 'dataset'"):
        apply_preset(preset)


PRESETS = sorted((ROOT / "presets").glob("*.yaml"))


def _assert_given(given, written, key):
    """Every value the preset gives is in the written params (sub-sections may give only some keys)."""
    if isinstance(given, dict) and key.rsplit(".", 1)[-1] != "model_cfg":
        for name, value in given.items():
            assert name in written, f"{key}.{name} missing"
            _assert_given(value, written[name], f"{key}.{name}")
    else:
        assert written == given, f"{key}: {written!r} != {given!r}"


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
    _assert_given(overlay, params, preset.name)  # every value the preset sets, in every section
    for path in FAMILIES:  # each family holds exactly the preset's entries, none from the defaults
        assert sorted(_family(params, path)) == sorted(_family(overlay, path)), path
    assert params["seeds"]["variants"]  # every preset makes seeds
    assert params["models"]["clip"]["random_init"] is False  # presets are for real weights


def test_clip_es_presets_follow_the_reference():
    voc, coco = (load_params_from_preset(ROOT / "presets" / f"clip_es_{name}.yaml") for name in ("voc", "coco"))
    for params in (voc, coco):
        assert sorted(params["cams"]["runs"]) == ["caa", "raw"]
        assert {name: run["method"] for name, run in params["cams"]["runs"].items()} == {
            "raw": "clip_es",
            "caa": "clip_es",
        }
        assert (params["cams"]["runs"]["raw"]["refine"], params["cams"]["runs"]["caa"]["refine"]) == ("none", "caa")
    for name in ("raw", "caa"):
        voc_run, coco_run = voc["cams"]["runs"][name], coco["cams"]["runs"][name]
        assert (voc_run["box_threshold"], coco_run["box_threshold"]) == (0.4, 0.7)
        assert (voc_run["background_words"], coco_run["background_words"]) == ("clip_es_voc", "clip_es_coco")
        for run in (voc_run, coco_run):
            assert run["reads"] == "artifacts/index"
            assert run["template"] == "a clean origami {}."
            assert run["scales"] == [1.0] and run["flip"] is False
            assert run["caa_layers"] == 8 and run["sinkhorn_rounds"] == 3
    for params in (voc, coco):
        crf = params["seeds"]["variants"]["crf"]["crf"]
        assert (crf["gaussian_sxy"], crf["gaussian_compat"], crf["iterations"]) == (1.0, 3.0, 10)
        assert (crf["bilateral_sxy"], crf["bilateral_srgb"], crf["bilateral_compat"]) == (67.0, 3.0, 4.0)


def load_params_from_preset(path):
    from wsss_core.params import apply_preset

    return apply_preset(path)


# A clip_es run written in a file, for the tests of one bad value in it.
CAMS_RUN = "cams:\n  runs:\n    caa:\n      method: clip_es\n      reads: artifacts/index\n"


def test_preset_with_a_bad_value_names_it(tmp_path):
    from wsss_core.params import apply_preset

    bad = tmp_path / "bad.yaml"
    bad.write_text(CAMS_RUN + "      box_threshold: high\n")
    with pytest.raises(ParamsError, match=r"bad.yaml: cams\.runs\.caa\.box_threshold: expected float, got 'high'"):
        apply_preset(bad)


def _required(schema) -> dict:
    """The keys an entry must give itself (no default, not nullable), with a value of the right type; those of its
    sub-sections nested (a CAM network's backbone.checkpoint)."""
    from wsss_core.params import Spec

    required = {}
    for name, spec in schema.items():
        if isinstance(spec, Spec) and spec.default is None and not spec.nullable:
            required[name] = "x"
        elif isinstance(spec, dict) and _required(spec):
            required[name] = _required(spec)
    return required


def _float_specs(schema, path=(), entries=()):
    """(path of keys, spec, entries) of every float parameter, lists of floats included.

    A stage family's entry is named `x`, or after its kind (the method of a cams run, the task of a learning run) when
    the family has kinds; `entries` lists (path, keys) of the entries on the way, with the keys each must give.
    """
    from wsss_core.params import MapOf, Spec

    for name, spec in schema.items():
        if isinstance(spec, dict):
            yield from _float_specs(spec, (*path, name), entries)
        elif isinstance(spec, MapOf):
            kinds = spec.kinds if spec.kind_key is not None else {None: {}}
            for kind, settings in kinds.items():
                entry_schema = {**spec.schema, **settings}
                entry = (*path, name, "x" if kind is None else kind)
                given = {**_required(entry_schema), **({spec.kind_key: kind} if kind is not None else {})}
                yield from _float_specs(entry_schema, entry, (*entries, (entry, given)))
        elif isinstance(spec, Spec) and float in (spec.type, spec.item):
            yield (*path, name), spec, entries


def _all_float_specs():
    from wsss_core.params import SECTIONS

    return [(section, *path) for section, schema in SECTIONS.items() for path, _, _ in _float_specs(schema)]


FLOAT_KEYS = _all_float_specs()


def test_the_float_walk_sees_every_ranged_float():
    from wsss_core.cam.methods import CAM_METHODS
    from wsss_core.params import SECTIONS

    specs = [spec for schema in SECTIONS.values() for _, spec, _ in _float_specs(schema)]
    assert len(specs) > 40 and all(spec.min is not None or spec.max is not None for spec in specs)
    assert ("seeds", "variants", "x", "crf", "confidence") in FLOAT_KEYS
    for method in CAM_METHODS:  # every method's own settings are walked
        assert ("cams", "runs", method, "box_threshold") in FLOAT_KEYS
    assert ("cams", "runs", "clip_es", "scales") in FLOAT_KEYS
    assert ("learn", "runs", "classification", "init_std") in FLOAT_KEYS
    assert ("learn", "runs", "segmentation", "init_std") in FLOAT_KEYS
    assert ("sam_masks", "runs", "x", "fma", "t_r") in FLOAT_KEYS
    assert ("retrain", "predict", "variants", "x", "sams", "alpha") in FLOAT_KEYS
    assert ("demo", "data", "image_size") not in FLOAT_KEYS  # ints are not floats


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("path", FLOAT_KEYS, ids=[".".join(p) for p in FLOAT_KEYS])
def test_non_finite_floats_are_rejected_naming_the_key(tmp_path, path, bad):
    from wsss_core.params import SECTIONS

    walk = {key: (spec, entries) for key, spec, entries in _float_specs(SECTIONS[path[0]])}
    spec, entries = walk[path[1:]]
    value = [bad] * (spec.length or 1) if spec.type is list else bad
    data = {}
    for entry, given in entries:  # the family entries on the way, with the keys they must give (method, reads, ...)
        node = data.setdefault(path[0], {})
        for name in entry:
            node = node.setdefault(name, {})
        node.update(given)
    node = data
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
    bad.write_text(CAMS_RUN + "      box_threshold: .nan\n")
    with pytest.raises(
        ParamsError, match=r"bad.yaml: cams\.runs\.caa\.box_threshold: must be a finite number, got nan"
    ):
        apply_preset(bad)


def test_params_check_fails_on_nan_naming_the_key(tmp_path):
    from typer.testing import CliRunner

    from wsss_core.cli import app

    path = tmp_path / "params.yaml"
    path.write_text(CAMS_RUN + "      box_threshold: .nan\n")
    result = CliRunner().invoke(app, ["params", "check", str(path)])
    assert result.exit_code == 1
    assert "cams.runs.caa.box_threshold: must be a finite number, got nan" in result.output


def _preset(tmp_path, *args):
    from typer.testing import CliRunner

    from wsss_core.cli import app

    out = tmp_path / "params.yaml"
    preset = ROOT / "presets" / "clip_es_voc.yaml"
    return CliRunner().invoke(app, ["params", "preset", str(preset), "--output", str(out), *args]), out


MY_EDITS = "# my own edits\n" + CAMS_RUN + "      box_threshold: 0.5\n"


def test_preset_refuses_to_overwrite_a_different_params_file(tmp_path):
    out = tmp_path / "params.yaml"
    out.write_text(MY_EDITS)
    result, _ = _preset(tmp_path)
    assert result.exit_code == 1
    assert f"{out} exists and differs" in result.output and "--force" in result.output
    assert out.read_text() == MY_EDITS
    assert not (tmp_path / "params.yaml.bak").exists()


def test_preset_with_force_keeps_a_backup_then_writes(tmp_path):
    out = tmp_path / "params.yaml"
    backup = tmp_path / "params.yaml.bak"
    backup.write_text("an older backup\n")
    old = MY_EDITS
    out.write_text(old)
    result, _ = _preset(tmp_path, "--force")
    assert result.exit_code == 0, result.output
    assert str(backup) in result.output
    assert backup.read_text() == old  # the older .bak is replaced by the file just overwritten
    assert load_params(out)["cams"]["runs"]["caa"]["box_threshold"] == 0.4


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


# ------------------------------------------------------------------------------- stage families with kinds (MapOf)


def _cams_run(**keys) -> dict:
    return {"cams": {"runs": {"a": {"reads": "artifacts/index", **keys}}}}


def _learn_run(**keys) -> dict:
    return {"learn": {"runs": {"a": {"reads": "artifacts/index", **keys}}}}


def test_the_cam_method_and_the_learning_task_are_named_with_the_allowed_ones(tmp_path):
    from wsss_core.cam.methods import CAM_METHODS

    assert {"clip_es", "fma_prompts"} <= set(CAM_METHODS)
    methods = ", ".join(CAM_METHODS)
    with pytest.raises(ParamsError, match=re.escape(f"cams.runs.a.method: 'gradcam' is not one of: {methods}")):
        load_params(_write(tmp_path, _cams_run(method="gradcam")))
    with pytest.raises(ParamsError, match=re.escape(f"cams.runs.a.method: None is not one of: {methods}")):
        load_params(_write(tmp_path, _cams_run()))  # no method at all
    with pytest.raises(
        ParamsError, match=re.escape("learn.runs.a.task: 'detection' is not one of: classification, segmentation")
    ):
        load_params(_write(tmp_path, _learn_run(task="detection")))
    with pytest.raises(ParamsError, match=re.escape("cams.runs.a: expected a mapping, got 'clip_es'")):
        load_params(_write(tmp_path, {"cams": {"runs": {"a": "clip_es"}}}))


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (_cams_run(method="fma_prompts", template="a photo of a {}."), "cams.runs.a.template"),  # a clip_es key
        (_cams_run(method="fma_prompts", class_names="dataset"), "cams.runs.a.class_names"),
        (_cams_run(method="clip_es", unknown=1), "cams.runs.a.unknown"),
        (_learn_run(task="classification", labels="seeds"), "learn.runs.a.labels"),  # a segmentation key
    ],
    ids=["clip_es-template-on-fma", "clip_es-class-names-on-fma", "typo", "segmentation-labels-on-classification"],
)
def test_a_key_of_another_kind_is_refused_as_unknown(tmp_path, data, key):
    with pytest.raises(ParamsError, match=re.escape(f"params.yaml: {key}: unknown key; allowed keys: ")) as raised:
        load_params(_write(tmp_path, data))
    allowed = str(raised.value).split("allowed keys: ")[1].split(", ")
    assert key.rsplit(".", 1)[1] not in allowed and "reads" in allowed  # the entry's own kind's keys are listed


def test_each_kind_has_its_own_keys_defaults_and_choices(tmp_path):
    both = {
        "clip": {"method": "clip_es", "reads": "artifacts/index"},
        "fma": {"method": "fma_prompts", "reads": "artifacts/prompts_x"},
    }
    runs = load_params(_write(tmp_path, {"cams": {"runs": both}}))["cams"]["runs"]
    assert (runs["clip"]["sinkhorn_rounds"], runs["fma"]["sinkhorn_rounds"]) == (3, 1)
    assert (runs["clip"]["refine"], runs["fma"]["refine"]) == ("caa", "score")
    assert "template" in runs["clip"] and "template" not in runs["fma"]
    assert runs["fma"]["store_resolution"] == "feature"  # a key every method shares
    with pytest.raises(ParamsError, match=r"cams\.runs\.a\.refine: 'score' is not allowed; choose one of: caa, none"):
        load_params(_write(tmp_path, _cams_run(method="clip_es", refine="score")))  # fma_prompts' choice only
    learn = {"c": {"task": "classification", "reads": "artifacts/index"}, "s": {"task": "segmentation", "reads": "x"}}
    runs = load_params(_write(tmp_path, {"learn": {"runs": learn}}))["learn"]["runs"]
    assert (runs["c"]["loss"], runs["s"]["loss"]) == ("mcl", "cal")
    assert runs["s"]["labels"] == "seeds" and "labels" not in runs["c"]
    with pytest.raises(ParamsError, match=r"learn\.runs\.a\.loss: 'cal' is not allowed; choose one of: mcl, bce"):
        load_params(_write(tmp_path, _learn_run(task="classification", loss="cal")))


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"seeds": {"variants": {"a": {"background": "power"}}}}, "seeds.variants.a.cams"),
        ({"seeds": {"sams": {"variants": {"a": {"masks": "sam"}}}}}, "seeds.sams.variants.a.cams"),
        ({"seeds": {"sams": {"variants": {"a": {"cams": "cams_caa"}}}}}, "seeds.sams.variants.a.masks"),
        ({"cams": {"runs": {"a": {"method": "clip_es"}}}}, "cams.runs.a.reads"),
        ({"learn": {"runs": {"a": {"task": "classification"}}}}, "learn.runs.a.reads"),
        ({"retrain": {"runs": {"a": {"network": "weclip_head"}}}}, "retrain.runs.a.seeds"),
        (
            {"retrain": {"predict": {"variants": {"a": {"postprocess": "none", "reads": "x"}}}}},
            "retrain.predict.variants.a.segmenter",
        ),
        (
            {"retrain": {"predict": {"variants": {"a": {"postprocess": "none", "segmenter": "x"}}}}},
            "retrain.predict.variants.a.reads",
        ),
    ],
    ids=[
        "seeds-cams",
        "sams-cams",
        "sams-masks",
        "cams-reads",
        "learn-reads",
        "retrain-seeds",
        "predict-segmenter",
        "predict-reads",
    ],
)
def test_keys_that_dvc_yaml_interpolates_have_no_default(tmp_path, data, key):
    with pytest.raises(ParamsError, match=re.escape(f"params.yaml: {key}: must not be null")):
        load_params(_write(tmp_path, data))


def test_entry_names_are_plain_identifiers(tmp_path):
    data = {"seeds": {"variants": {"my-seeds": {"cams": "cams_caa"}}}}
    with pytest.raises(ParamsError, match=r"seeds\.variants: name 'my-seeds' must be a plain identifier"):
        load_params(_write(tmp_path, data))
    with pytest.raises(ParamsError, match=r"seeds\.variants: expected a mapping of names to sections"):
        load_params(_write(tmp_path, {"seeds": {"variants": ["cam"]}}))


def test_a_preset_replaces_a_family_as_a_whole():
    from wsss_core.params import merge

    base = {"seeds": {"variants": {"cam": {"cams": "cams_raw"}}, "sams": {"variants": {"s": {"alpha": 0.6}}}}}
    merged = merge(base, {"seeds": {"variants": {"crf": {"cams": "cams_caa"}}}})
    assert merged["seeds"]["variants"] == {"crf": {"cams": "cams_caa"}}  # not merged with "cam"
    assert merged["seeds"]["sams"] == base["seeds"]["sams"]  # the rest of the section still merges
    merged = merge({"cams": {"device": "cpu", "runs": {"a": {}}}}, {"cams": {"runs": {}}})
    assert merged == {"cams": {"device": "cpu", "runs": {}}}


# ---------------------------------------------------------------------------- the pipeline's cross-key checks


def _validated(change=None) -> dict:
    """small_params() (the shipped pipeline, small settings), changed by `change`, validated section by section."""
    from wsss_core.params import SECTIONS, validate_section

    raw = small_params()
    if change is not None:
        change(raw)
    return {name: validate_section(raw.get(name), schema, name) for name, schema in SECTIONS.items()}


def _del(path: str):
    def change(params):
        *parents, last = path.split(".")
        for name in parents:
            params = params[name]
        del params[last]

    return change


def _set(path: str, value):
    def change(params):
        *parents, last = path.split(".")
        for name in parents:
            params = params[name]
        params[last] = value

    return change


def test_the_small_pipeline_has_no_problem_and_lists_one_stage_per_entry():
    from wsss_core.params.pipeline import pipeline_problems, pipeline_stages

    params = _validated()
    assert pipeline_problems(params, files=False) == []
    stages = pipeline_stages(params)
    assert [stage.name for stage in stages] == _expected_stages(small_params())
    keys = {stage.name: stage.key for stage in stages}
    assert keys["cams@caa"] == "cams.runs.caa" and keys["evaluate_sams@fine"] == "seeds.sams.variants.fine"
    writes = {stage.name: stage.writes for stage in pipeline_stages(params)}
    assert writes["cams@caa"] == ("artifacts/cams_caa.zarr",) and writes["sam_masks@felzenszwalb"] == (
        "artifacts/masks_felzenszwalb",
    )
    reads = {stage.name: stage.reads for stage in pipeline_stages(params)}
    assert reads["learn@segmentation"]["learn.runs.segmentation.reads"] == "artifacts/seeds_coarse.zarr"
    assert reads["sams_seeds@fine"] == {
        "seeds.sams.variants.fine.cams": "artifacts/cams_fine.zarr",
        "seeds.sams.variants.fine.masks": "artifacts/masks_felzenszwalb",
    }


# (params change, the key the problem names, a fragment of its message)
CROSS_KEY_PROBLEMS = {
    "seeds-variant-of-a-missing-cams-run": (
        _del("cams.runs.raw"),
        "seeds.variants.cam.cams",
        "artifacts/cams_raw.zarr is read by stage seeds@cam but no stage of these params makes it",
    ),
    "seeds-variant-of-another-artifact": (
        _set("seeds.variants.caa.cams", "seeds_cam"),
        "seeds.variants.caa.cams",
        "'seeds_cam' is not a CAM artifact, cams_<a key of cams.runs>",
    ),
    "segmentation-prompts-from-seeds-nobody-makes": (
        _del("seeds.sams.variants.coarse"),
        "learn.runs.segmentation.reads",
        "artifacts/seeds_coarse.zarr is read by stage learn@segmentation but no stage of these params makes it",
    ),
    "segmentation-prompts-from-the-index": (
        _set("learn.runs.segmentation.reads", "artifacts/index"),
        "learn.runs.segmentation.reads",
        "'artifacts/index' is not a seed artifact, artifacts/seeds_<variant>.zarr",
    ),
    "classification-prompts-from-seeds": (
        _set("learn.runs.classification.reads", "artifacts/seeds_cam.zarr"),
        "learn.runs.classification.reads",
        "'artifacts/seeds_cam.zarr' is not artifacts/index",
    ),
    "fma-prompts-cams-reading-the-index": (
        _set("cams.runs.coarse.reads", "artifacts/index"),
        "cams.runs.coarse.reads",
        "'artifacts/index' is not artifacts/prompts_<run>",
    ),
    "fma-prompts-cams-of-a-missing-learn-run": (
        _set("cams.runs.coarse.reads", "artifacts/prompts_nowhere"),
        "cams.runs.coarse.reads",
        "artifacts/prompts_nowhere is read by stage cams@coarse but no stage of these params makes it",
    ),
    "clip-es-cams-reading-prompts": (
        _set("cams.runs.raw.reads", "artifacts/prompts_classification"),
        "cams.runs.raw.reads",
        "'artifacts/prompts_classification' is not artifacts/index (clip_es reads nothing else)",
    ),
    "sams-variant-of-a-missing-mask-run": (
        _set("seeds.sams.variants.fine.masks", "sam_vit_h"),
        "seeds.sams.variants.fine.masks",
        "artifacts/masks_sam_vit_h is read by stage sams_seeds@fine but no stage of these params makes it",
    ),
    "sams-prediction-reading-the-segmenter": (
        _set("retrain.predict.variants.sams.reads", "artifacts/segmenter_weclip"),
        "retrain.predict.variants.sams.reads",
        "'artifacts/segmenter_weclip' is not artifacts/masks_<a key of sam_masks.runs>",
    ),
    "sams-prediction-without-eval-split-masks": (
        _set("sam_masks.runs.felzenszwalb.eval_split", False),
        "retrain.predict.variants.sams.reads",
        "artifacts/masks_felzenszwalb has no eval-split masks (its eval_split is false)",
    ),
    "sams-prediction-of-a-missing-mask-run": (
        _set("retrain.predict.variants.sams.reads", "artifacts/masks_sam_vit_h"),
        "retrain.predict.variants.sams.reads",
        "artifacts/masks_sam_vit_h is read by stage predict@sams but no stage of these params makes it",
    ),
    "plain-prediction-reading-masks": (
        _set("retrain.predict.variants.plain.reads", "artifacts/masks_felzenszwalb"),
        "retrain.predict.variants.plain.reads",
        "'artifacts/masks_felzenszwalb' is not artifacts/segmenter_weclip, the variant's segmenter (postprocess none "
        "reads nothing else)",
    ),
    "prediction-with-seeds-for-a-segmenter": (
        _set("retrain.predict.variants.sams.segmenter", "artifacts/seeds_crf.zarr"),
        "retrain.predict.variants.sams.segmenter",
        "'artifacts/seeds_crf.zarr' is not artifacts/segmenter_<a key of retrain.runs> or artifacts/adapter_<a key "
        "of adapt.runs>",
    ),
    "prediction-with-a-segmenter-no-run-makes": (
        _set("retrain.predict.variants.sams.segmenter", "artifacts/segmenter_deeplab"),
        "retrain.predict.variants.sams.segmenter",
        "artifacts/segmenter_deeplab is read by stage predict@sams but no stage of these params makes it",
    ),
    "prediction-with-an-adapter-no-run-makes": (
        _set("retrain.predict.variants.sams.segmenter", "artifacts/adapter_nope"),
        "retrain.predict.variants.sams.segmenter",
        "artifacts/adapter_nope is read by stage predict@sams but no stage of these params makes it",
    ),
    "retraining-on-a-missing-seed-variant": (
        _set("retrain.runs.weclip.seeds", "nope"),
        "retrain.runs.weclip.seeds",
        "artifacts/seeds_nope.zarr is read by stage retrain@weclip but no stage of these params makes it",
    ),
}


@pytest.mark.parametrize("case", CROSS_KEY_PROBLEMS)
def test_a_read_no_stage_makes_or_of_the_wrong_kind_names_its_key(case):
    from wsss_core.params.pipeline import check_pipeline, pipeline_problems

    change, key, fragment = CROSS_KEY_PROBLEMS[case]
    params = _validated(change)
    (problem,) = pipeline_problems(params, files=False)  # one problem, naming the key first
    assert problem.startswith(f"{key}: {fragment}")
    with pytest.raises(ParamsError, match=re.escape(f"{key}: {fragment}")):
        check_pipeline(params, files=False)


def test_two_families_writing_one_artifact_are_named_by_their_keys():
    from wsss_core.params.pipeline import check_pipeline, pipeline_problems

    def sams_variant_named_like_a_seeds_variant(params):
        params["seeds"]["sams"]["variants"]["cam"] = params["seeds"]["sams"]["variants"]["sams"]

    params = _validated(sams_variant_named_like_a_seeds_variant)
    problems = pipeline_problems(params, files=False)
    assert problems and any("artifacts/seeds_cam.zarr" in problem for problem in problems)
    for problem in problems:  # the seeds and their metrics
        assert problem.startswith("seeds.sams.variants.cam: ") and "seeds.variants.cam" in problem.split(": ", 1)[1]
        assert "rename one" in problem
    with pytest.raises(ParamsError, match=r"(?s)seeds\.sams\.variants\.cam: .*artifacts/seeds_cam\.zarr"):
        check_pipeline(params, files=False)


def test_checkpoints_and_data_must_exist_only_with_files(tmp_path):
    from wsss_core.params.pipeline import pipeline_problems

    params = _validated()  # small_params: models.clip.checkpoint null (random weights)
    assert params["models"]["clip"]["checkpoint"] is None
    assert pipeline_problems(params, files=False) == []
    (problem,) = pipeline_problems(params, files=True, root=tmp_path)
    assert problem.startswith("models.clip.checkpoint: null, but stages describe@synthetic, learn@classification, ")
    assert "cams@raw" in problem and "cams@excel" in problem and "retrain@weclip" in problem
    assert "predict@sams" in problem
    # a network without CLIP: retraining and prediction do not read the CLIP checkpoint
    deeplab = {"seeds": "crf", "network": "deeplabv3plus", "deeplabv3plus": {"random_init": True}}
    (problem,) = pipeline_problems(_validated(_set("retrain.runs.weclip", deeplab)), files=True, root=tmp_path)
    assert problem.startswith("models.clip.checkpoint: null") and "retrain" not in problem and "predict" not in problem

    def real_files(params):
        params["dataset"].update({"kind": "voc", "root": "data/voc"})
        params["models"]["clip"].update({"checkpoint": "checkpoints/clip.pt", "random_init": False})

    params = _validated(real_files)
    assert pipeline_problems(params, files=False) == []
    problems = pipeline_problems(params, files=True, root=tmp_path)
    assert problems == [
        "dataset.root: data/voc (read by stage prepare) does not exist",
        "models.clip.checkpoint: checkpoints/clip.pt (read by stages describe@synthetic, learn@classification, "
        "learn@segmentation, adapt@excel, adapt@vda, cams@raw, cams@caa, cams@excel, cams@excel_adapter, cams@vda, "
        "cams@coarse, cams@fine, retrain@weclip, predict@plain, predict@crf, predict@sams) does not exist",
    ]
    (tmp_path / "data" / "voc").mkdir(parents=True)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "clip.pt").write_bytes(b"weights")
    assert pipeline_problems(params, files=True, root=tmp_path) == []


def test_check_pipeline_lists_every_problem():
    from wsss_core.params.pipeline import check_pipeline

    def two_problems(params):
        _set("seeds.variants.cam.cams", "cams_nowhere")(params)
        _set("retrain.runs.weclip.seeds", "nope")(params)

    with pytest.raises(ParamsError) as raised:
        check_pipeline(_validated(two_problems), files=False)
    lines = str(raised.value).strip().splitlines()
    assert [line.strip().split(":")[0] for line in lines] == ["seeds.variants.cam.cams", "retrain.runs.weclip.seeds"]


# ------------------------------------------------------------------------------------------ `wsss params check`


def _expected_stages(overlay: dict) -> list[str]:
    """The stages a root `dvc repro` runs for a preset, from its families alone, in run order."""

    def names(*path):
        return list(_family(overlay, path))

    return [
        "prepare",
        *(f"sam_masks@{name}" for name in names("sam_masks", "runs")),
        *(f"sd_cache@{name}" for name in names("sd_cache", "runs")),
        *(f"describe@{name}" for name in names("describe", "runs")),
        *(f"learn@{name}" for name in names("learn", "runs")),
        *(f"adapt@{name}" for name in names("adapt", "runs")),
        *(f"cam_net@{name}" for name in names("cam_nets", "runs")),
        *(f"cams@{name}" for name in names("cams", "runs")),
        *(f"net_cams@{name}" for name in names("cam_nets", "cams")),
        *(f"seeds@{name}" for name in names("seeds", "variants")),
        *(f"sams_seeds@{name}" for name in names("seeds", "sams", "variants")),
        *(f"evaluate@{name}" for name in names("seeds", "variants")),
        *(f"evaluate_sams@{name}" for name in names("seeds", "sams", "variants")),
        *(f"retrain@{name}" for name in names("retrain", "runs")),
        *(f"predict@{name}" for name in names("retrain", "predict", "variants")),
        *(f"evaluate_predictions@{name}" for name in names("retrain", "predict", "variants")),
    ]


def _check(path: Path):
    from typer.testing import CliRunner

    from wsss_core.cli import app

    return CliRunner().invoke(app, ["params", "check", str(path)])


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_params_check_accepts_every_preset_and_lists_its_stages(preset):
    result = _check(preset)
    assert result.exit_code == 0, result.output
    stages = _expected_stages(yaml.safe_load(preset.read_text()))
    assert f"{preset}: OK; dvc repro runs {', '.join(stages)}\n" in result.stdout
    assert stages[0] == "prepare" and any(stage.startswith(("cams@", "net_cams@")) for stage in stages)


def test_params_check_warns_about_inputs_not_on_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, small_params())
    result = _check(path)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{path}: OK; dvc repro runs prepare, sam_masks@felzenszwalb, ")
    assert "warning: models.clip.checkpoint: null, but stages" in result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("seeds.variants.cam.cams", "cams_nowhere"), "seeds.variants.cam.cams: artifacts/cams_nowhere.zarr"),
        (_set("cams.runs.raw.method", "gradcam"), "cams.runs.raw.method: 'gradcam' is not one of: "),
        (_del("seeds.variants.crf.cams"), "seeds.variants.crf.cams: must not be null"),
        (
            _set("retrain.predict.variants.sams.reads", "artifacts/segmenter_weclip"),
            "retrain.predict.variants.sams.reads: ",
        ),
    ],
    ids=["unmade-read", "unknown-method", "missing-cams", "wrong-kind"],
)
def test_params_check_fails_on_a_broken_file_naming_the_key(tmp_path, change, message):
    params = small_params()
    change(params)
    result = _check(_write(tmp_path, params))
    assert result.exit_code == 1
    assert message in result.stderr and "OK" not in result.stdout


def test_params_preset_refuses_a_preset_whose_pipeline_is_broken(tmp_path):
    from typer.testing import CliRunner

    from wsss_core.cli import app

    overlay = yaml.safe_load((ROOT / "presets" / "clip_es_voc.yaml").read_text())
    overlay["seeds"]["variants"]["cam"]["cams"] = "cams_nowhere"
    preset, out = tmp_path / "broken.yaml", tmp_path / "params.yaml"
    preset.write_text(yaml.safe_dump(overlay))
    result = CliRunner().invoke(app, ["params", "preset", str(preset), "--output", str(out)])
    assert result.exit_code == 1
    assert "seeds.variants.cam.cams: artifacts/cams_nowhere.zarr is read by stage seeds@cam" in result.output
    assert not out.exists()
