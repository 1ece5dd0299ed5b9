"""The stage scripts end to end on a tiny synthetic dataset: outputs, provenance, determinism, resume, errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import ROOT
from wsss_core.audit import audit
from wsss_core.hashing import sha256_path
from wsss_core.store import DenseMaps


class Killed(BaseException):
    """Stands for the process being killed part-way through a stage: like a signal, no `except Exception` sees it."""


def stage(name: str):
    """The Typer app of stages/<name>.py, loaded from its file like `python stages/<name>.py` would."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


def invoke(name: str, *args: str):
    return CliRunner().invoke(stage(name), list(args), catch_exceptions=False)


def run_ok(name: str, *args: str):
    result = invoke(name, *args)
    assert result.exit_code == 0, result.output
    return result


def run_cams(*args: str) -> None:
    """The demo's two CLIP-ES runs: cams@raw and cams@caa (extra args, e.g. --out, go to both)."""
    for name in ("raw", "caa"):
        extra = [arg.replace("{name}", name) for arg in args]
        run_ok("cams", name, *extra)


def run_to_seed_metrics(variants: tuple[str, ...] = ("cam", "crf")) -> None:
    """In the working directory: data, index, CAMs, then each seed variant and its metrics."""
    run_ok("demo_data")
    run_ok("prepare")
    run_cams()
    for variant in variants:
        run_ok("seeds", variant)
        run_ok("evaluate", f"seeds_{variant}")


def kill_cams_on_fourth_image(monkeypatch):
    """Run the cams stage until it dies on its fourth image, as a kill would; return the undisturbed ClipEs call."""
    from wsss_core.cam import clip_es

    original = clip_es.ClipEs.__call__
    calls = {"n": 0}

    def dies_on_fourth_image(self, image, class_ids):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Killed
        return original(self, image, class_ids)

    with monkeypatch.context() as patch:
        patch.setattr(clip_es.ClipEs, "__call__", dies_on_fourth_image)
        with pytest.raises(Killed):
            invoke("cams", "caa")
    return original


def test_pipeline_from_data_to_metrics(project):
    run_to_seed_metrics()

    cams = DenseMaps(project / "artifacts" / "cams_caa.zarr", kind="cams")
    assert len(cams) == 6
    for index in range(len(cams)):
        maps = cams[index]
        assert maps.shape == (len(cams.classes(index)), 4, 4)  # 64x64 image, patch 16
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    seeds = DenseMaps(project / "artifacts" / "seeds_crf.zarr", kind="labels")
    for index in range(len(seeds)):
        labels = seeds[index]
        assert labels.shape == (64, 64)
        allowed = {0, 255, *cams.classes(index).tolist()}
        assert set(np.unique(labels).tolist()) <= allowed  # seeds only use the image's own labels

    metrics = json.loads((project / "metrics" / "seeds_cam" / "metrics.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0 and metrics["n_images"] == 6
    assert (project / "metrics" / "seeds_cam" / "confusion.png").stat().st_size > 0

    node = audit(project / "metrics" / "seeds_crf")
    assert node.ok
    labels_node = next(child for child in node.children if child.name == "labels")
    cams_node = next(child for child in labels_node.children if child.name == "cams")
    assert cams_node.stage == "cams" and cams_node.children[0].stage == "prepare"
    assert DenseMaps(project / "artifacts" / "cams_raw.zarr", kind="cams").provenance["details"]["variant"] == "raw"


def test_same_inputs_give_byte_identical_artifacts(project):
    run_ok("demo_data")
    first_data = sha256_path(project / "data" / "demo")
    run_ok("prepare")
    run_cams()
    run_ok("seeds", "crf")
    before = {name: sha256_path(project / "artifacts" / name) for name in ("index", "cams_raw.zarr", "seeds_crf.zarr")}
    run_ok("demo_data")
    run_ok("prepare")
    run_cams()
    run_ok("seeds", "crf")
    after = {name: sha256_path(project / "artifacts" / name) for name in before}
    assert sha256_path(project / "data" / "demo") == first_data
    assert after == before


def test_cams_resume_after_a_kill_gives_the_same_bytes(project, monkeypatch):
    run_ok("demo_data")
    run_ok("prepare")
    run_ok("cams", "caa", "--out", "reference/cams_caa.zarr")
    expected = sha256_path(project / "reference" / "cams_caa.zarr")

    from wsss_core.cam import clip_es

    original = kill_cams_on_fourth_image(monkeypatch)
    assert not (project / "artifacts" / "cams_caa.zarr").exists()  # no half artifact

    counted = {"n": 0}

    def counting(self, image, class_ids):
        counted["n"] += 1
        return original(self, image, class_ids)

    monkeypatch.setattr(clip_es.ClipEs, "__call__", counting)
    run_ok("cams", "caa")
    assert counted["n"] == 3  # the three finished images (one per shard here) were not recomputed
    assert sha256_path(project / "artifacts" / "cams_caa.zarr") == expected


def test_cams_resumed_after_a_code_change_recompute_every_image(project, monkeypatch):
    # The reliability issue's reproduction: kill cams half-way, change the CAM code, rerun.
    from wsss_core.cam import clip_es
    from wsss_core.store import scratch

    run_ok("demo_data")
    run_ok("prepare")
    original = kill_cams_on_fourth_image(monkeypatch)

    def edited(self, image, class_ids):  # the new code: other maps, and other source bytes
        cams = original(self, image, class_ids)
        return clip_es.ClipEsCams(cams.class_ids, cams.raw * 0.5, cams.refined * 0.5)

    monkeypatch.setattr(clip_es.ClipEs, "__call__", edited)
    monkeypatch.setattr(scratch, "code_fingerprint", lambda: "after the edit")
    run_cams()
    run_cams("--out", "reference/cams_{name}.zarr")  # the new code from scratch
    for name in ("cams_raw.zarr", "cams_caa.zarr"):
        assert sha256_path(project / "artifacts" / name) == sha256_path(project / "reference" / name)


def test_corrupted_image_stops_prepare_with_its_name_and_keeps_no_index(project):
    run_ok("demo_data")
    broken = sorted((project / "data" / "demo" / "JPEGImages").glob("*.jpg"))[2]
    broken.write_bytes(b"\xff\xd8 this is not a jpeg")
    result = invoke("prepare")
    assert result.exit_code == 1
    assert broken.name in result.output
    assert not (project / "artifacts" / "index").exists()


def test_caa_affinity_source_reaches_the_caa_cams_and_their_provenance(project):
    run_ok("demo_data")
    run_ok("prepare")
    maps = {}
    for source in ("attention", "features"):
        params = yaml.safe_load(Path("params.yaml").read_text())
        for run in params["cams"]["runs"].values():
            if "affinity_source" in run:  # the trained ExCEL CAMs' CAA reads the head's affinity instead
                run["affinity_source"] = source
        Path("params.yaml").write_text(yaml.safe_dump(params))
        run_cams()
        raw = DenseMaps(project / "artifacts" / "cams_raw.zarr", kind="cams")
        caa = DenseMaps(project / "artifacts" / "cams_caa.zarr", kind="cams")
        assert caa.provenance["params"]["cams.runs.caa"]["affinity_source"] == source
        maps[source] = ([raw[index] for index in range(len(raw))], [caa[index] for index in range(len(caa))])
    (raw_attention, caa_attention), (raw_features, caa_features) = maps["attention"], maps["features"]
    assert all(np.array_equal(a, b) for a, b in zip(raw_attention, raw_features, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(caa_attention, caa_features, strict=True))


def test_bad_params_stop_every_stage_with_the_key(project):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["cams"]["runs"]["caa"]["box_threshold"] = 1.5
    Path("params.yaml").write_text(yaml.safe_dump(params))
    for name in ("caa", "raw"):  # a bad value anywhere stops every stage: the params file is checked as a whole
        result = invoke("cams", name)
        assert result.exit_code == 1
        assert "cams.runs.caa.box_threshold: must be <= 1.0, got 1.5" in result.output


def test_unknown_seed_variant_is_named(project):
    result = invoke("seeds", "sams")
    assert result.exit_code == 1
    assert (
        "seeds.variants.sams: no such variant; defined: cam, caa, crf, excel, excel_adapter, vda "
        "(sams is a SAMS variant: run " in result.output
    )
    result = invoke("seeds", "nothing")
    assert result.exit_code == 1 and result.output.strip().endswith("defined: cam, caa, crf, excel, excel_adapter, vda")
    result = invoke("cams", "nothing")
    assert (
        result.exit_code == 1
        and "cams.runs.nothing: no such entry; defined: raw, caa, excel, excel_adapter, vda, coarse, fine"
        in result.output
    )


def test_seeds_refuse_cams_without_their_index(project):
    run_ok("demo_data")
    run_ok("prepare")
    run_cams()
    (project / "artifacts" / "index" / "train.parquet").unlink()
    result = invoke("seeds", "cam")
    assert result.exit_code == 1
    assert "train.parquet: table not found" in result.output
    assert not (project / "artifacts" / "seeds_cam.zarr").exists()


def test_demo_data_never_touches_the_configured_dataset(project):
    # The reproduction from the reliability issue: a VOC preset applied, then the demo stage run (as `dvc repro` did).
    voc = project / "data" / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SENTINEL.txt").write_text("x")
    (voc / "JPEGImages" / "2007_000027.jpg").write_bytes(b"user image")
    before = sha256_path(voc)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["dataset"].update({"kind": "voc", "root": "data/VOCdevkit/VOC2012"})
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    run_ok("demo_data")
    assert sha256_path(voc) == before
    assert (project / "data" / "demo" / "JPEGImages").is_dir()  # its declared output, and nothing else
    assert sorted(path.name for path in (project / "data").iterdir()) == ["VOCdevkit", "demo"]
    result = invoke("demo_data", "--out", str(voc))  # pointed at the user's tree by hand: refused, path named
    assert result.exit_code == 1 and "VOC2012: exists and was not created by the demo generator" in result.output
    assert sha256_path(voc) == before


def test_consumers_refuse_maps_of_images_that_have_since_changed(project):
    # The reliability issue's reproduction: regenerate the data with another seed (same image ids), rerun prepare.
    run_to_seed_metrics(("caa",))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["demo"]["data"]["seed"] += 1
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    run_ok("demo_data")
    run_ok("prepare")
    seeds_before = sha256_path(project / "artifacts" / "seeds_caa.zarr")
    for stage_args, artifact in ((("seeds", "caa"), "cams_caa.zarr"), (("evaluate", "seeds_caa"), "seeds_caa.zarr")):
        result = invoke(*stage_args)
        assert result.exit_code == 1, result.output
        assert f"{artifact}: computed from another version of image 'syn_000001'" in result.output
        assert "artifacts/index/train.parquet" in result.output
    assert sha256_path(project / "artifacts" / "seeds_caa.zarr") == seeds_before  # no partial or new artifact
