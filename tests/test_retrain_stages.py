"""The retrain and predict stages end to end on the tiny synthetic dataset: artifacts, provenance, evaluation,
resume after a kill, every network and post-processing option through params alone, and errors naming the key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import ONE_RAY_AT_A_TIME
from tests.test_stages import Killed, invoke, run_ok
from wsss_core.audit import audit, read_provenance
from wsss_core.hashing import sha256_file, sha256_path
from wsss_core.store import DenseMaps


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, small_project_params) -> Path:
    """A project with data, index, CAMs, CRF seeds and SAM masks (Felzenszwalb), built once for this module."""
    import os

    root = tmp_path_factory.mktemp("seeded")
    (root / "params.yaml").write_text(yaml.safe_dump(small_project_params, sort_keys=False))
    previous = os.getcwd()
    os.chdir(root)
    try:
        for name, *args in (
            ("demo_data",),
            ("prepare",),
            ("cams", "caa"),
            ("seeds", "crf"),
            ("sam_masks", "felzenszwalb"),
        ):
            run_ok(name, *args)
    finally:
        os.chdir(previous)
    return root


@pytest.fixture(scope="module")
def small_project_params() -> dict:
    from tests.conftest import small_params

    params = small_params()  # a 4-update schedule, a narrow WeCLIP head
    runs = params["retrain"]["runs"]
    runs["weclip"]["seeds"] = "crf"  # the seeds the module's project builds
    one_update = {"seeds": "crf", "schedule": {**runs["weclip"]["schedule"], "iterations": 1, "crop_size": 32}}
    runs["deeplab"] = {
        **one_update,
        "network": "deeplabv3plus",
        "deeplabv3plus": {"blocks": [1, 1, 1, 1], "output_stride": 16, "random_init": True},
    }
    runs["weaktr"] = {
        **one_update,
        "network": "weaktr",
        "weaktr": {"encoder_cfg": {"embed_dim": 32, "depth": 2, "num_heads": 2}, "random_init": True},
    }
    for variant in params["retrain"]["predict"]["variants"].values():
        variant["scales"] = [1.0]  # keep the test's views few; multi-scale and flip are tested in test_segment_train
    return params


@pytest.fixture
def project(seeded, tmp_path, monkeypatch) -> Path:
    """A private copy of the seeded project as the working directory."""
    shutil.copytree(seeded, tmp_path / "p")
    monkeypatch.chdir(tmp_path / "p")
    return tmp_path / "p"


def edit_params(**retrain_changes) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    for key, value in retrain_changes.items():
        section = params["retrain"]
        *parents, last = key.split("__")
        for parent in parents:
            section = section[parent]
        section[last] = value
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_retrain_predict_and_evaluate_on_the_eval_split(project):
    run_ok("retrain", "weclip")
    curve = (project / "metrics" / "retrain_weclip" / "curve.csv").read_text().splitlines()
    assert curve[0] == "step,loss,lr" and len(curve) == 1 + 4
    segmenter = read_provenance(project / "artifacts" / "segmenter_weclip")
    assert segmenter["details"]["network"] == "weclip_head" and segmenter["details"]["split"] == "train"
    assert segmenter["details"]["run"] == "weclip" and set(segmenter["params"]) == {
        "retrain.runs.weclip",
        "models.clip",
    }
    assert set(segmenter["upstream"]) == {"seeds", "index"}
    assert "clip" in segmenter["checkpoints"]

    for variant in ("plain", "crf", "sams"):
        run_ok("predict", variant)
        result = run_ok("evaluate", f"predictions_{variant}")
        assert f"evaluate predictions_{variant}: mIoU" in result.output
        predictions = DenseMaps(project / "artifacts" / f"predictions_{variant}.zarr", kind="labels")
        assert len(predictions) == 3  # the val split
        assert predictions.provenance["upstream"]["index"]["path"] == "artifacts/index/val.parquet"
        assert predictions.provenance["upstream"]["segmenter"]["path"] == "artifacts/segmenter_weclip"
        for index in range(len(predictions)):
            labels = predictions[index]
            assert labels.shape == (64, 64) and labels.max() < 7  # every pixel gets one of the 7 classes
        metrics = json.loads((project / "metrics" / f"predictions_{variant}" / "metrics.json").read_text())
        assert metrics["n_images"] == 3 and 0 <= metrics["miou"] <= 1 and "oracle" not in metrics

    sams = DenseMaps(project / "artifacts" / "predictions_sams.zarr")
    assert sams.provenance["upstream"]["masks"]["path"] == "artifacts/masks_felzenszwalb/val"
    node = audit(project / "metrics" / "predictions_crf")
    assert node.ok
    labels_node = next(child for child in node.children if child.name == "labels")
    segmenter_node = next(child for child in labels_node.children if child.name == "segmenter")
    assert segmenter_node.stage == "retrain"
    assert {child.name for child in segmenter_node.children} == {"seeds", "index"}


@ONE_RAY_AT_A_TIME
def test_predictions_on_the_ray_engine_are_the_local_bytes(project):
    run_ok("retrain", "weclip")
    for variant in ("plain", "sams"):  # sams: the masks are read in the stage's process and sent with the image
        run_ok("predict", variant, "--artifacts", "local")
        run_ok("predict", variant, "--engine", "ray", "--address", "local")  # a Ray instance of its own
        ray_bytes = sha256_path(project / "artifacts" / f"predictions_{variant}.zarr")
        assert ray_bytes == sha256_path(project / "local" / f"predictions_{variant}.zarr")


def test_retrain_resumes_after_a_kill_with_the_same_weights(project, monkeypatch):
    run_ok("retrain", "weclip", "--out-dir", "reference", "--curve", "reference.csv")
    expected = sha256_file(project / "reference" / "weights.safetensors")

    from wsss_core.segment import train as train_module

    original = train_module.make_batch
    steps = []

    def dies_at_step_three(data, step, *args):
        steps.append(step)
        if step == 3:
            raise Killed
        return original(data, step, *args)

    monkeypatch.setattr(train_module, "make_batch", dies_at_step_three)
    with pytest.raises(Killed):
        invoke("retrain", "weclip")
    assert not (project / "artifacts" / "segmenter_weclip").exists()  # no half artifact
    steps.clear()
    monkeypatch.setattr(
        train_module, "make_batch", lambda data, step, *args: steps.append(step) or original(data, step, *args)
    )
    run_ok("retrain", "weclip")
    assert steps == [2, 3]  # resumed from the checkpoint written after 2 updates
    assert sha256_file(project / "artifacts" / "segmenter_weclip" / "weights.safetensors") == expected
    curve = project / "metrics" / "retrain_weclip" / "curve.csv"
    assert curve.read_text() == (project / "reference.csv").read_text()
    assert not any((project / ".wsss_scratch").glob("segmenter_weclip-*"))  # the checkpoint is dropped once committed


@pytest.mark.parametrize(("run", "network"), [("deeplab", "deeplabv3plus"), ("weaktr", "weaktr")])
def test_every_network_trains_and_predicts_through_params_alone(project, run, network):
    run_ok("retrain", run)
    assert read_provenance(project / "artifacts" / f"segmenter_{run}")["details"]["network"] == network
    segmenter = f"artifacts/segmenter_{run}"
    edit_params(predict__variants__plain__segmenter=segmenter, predict__variants__plain__reads=segmenter)
    run_ok("predict", "plain")
    predictions = DenseMaps(project / "artifacts" / "predictions_plain.zarr", kind="labels")
    assert all(predictions[i].shape == (64, 64) for i in range(len(predictions)))
    assert predictions.provenance["details"]["network"] == network


def test_errors_name_the_key(project):
    run_ok("retrain", "weclip")
    edit_params(runs__weclip__seeds="sam")
    result = invoke("retrain", "weclip")
    assert result.exit_code == 1
    assert (
        "retrain.runs.weclip.seeds: artifacts/seeds_sam.zarr is read by stage retrain@weclip but no stage of these "
        "params makes it" in result.output
    )
    edit_params(runs__weclip__seeds="crf", runs__deeplab__deeplabv3plus__random_init=False)
    result = invoke("retrain", "deeplab")
    assert result.exit_code == 1
    assert "retrain.runs.deeplab.deeplabv3plus.checkpoint: no pretrained backbone weights" in result.output
    result = invoke("retrain", "nope")
    assert (
        result.exit_code == 1 and "retrain.runs.nope: no such entry; defined: weclip, deeplab, weaktr" in result.output
    )

    result = invoke("predict", "fancy")
    assert result.exit_code == 1 and "retrain.predict.variants.fancy: no such entry" in result.output

    edit_params(predict__variants__plain__window=32, predict__variants__plain__stride=40)
    result = invoke("predict", "plain")
    assert (
        result.exit_code == 1 and "retrain.predict.variants.plain.stride: must lie in 1..window (32)" in result.output
    )
    edit_params(predict__variants__crf__unflipped_scales=[1.5])
    result = invoke("predict", "crf")
    assert result.exit_code == 1
    assert "retrain.predict.variants.crf.unflipped_scales: 1.5 is not one of the scales [1.0]" in result.output
    edit_params(predict__variants__crf__unflipped_scales=[])

    shutil.rmtree(project / "artifacts" / "masks_felzenszwalb" / "val")
    result = invoke("predict", "sams")
    assert result.exit_code == 1
    assert "retrain.predict.variants.sams.reads: artifacts/masks_felzenszwalb/val not found" in result.output

    params = yaml.safe_load(Path("params.yaml").read_text())
    params["models"]["clip"]["seed"] = 1  # another CLIP than the head was trained on
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = invoke("predict", "crf")
    assert result.exit_code == 1 and "rerun its stage retrain@weclip or restore models.clip" in result.output
    assert not (project / "artifacts" / "predictions_crf.zarr").exists()
