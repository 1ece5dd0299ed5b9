"""The real dvc.yaml under DVC: a second `dvc repro` reruns nothing, and a param change reruns only its readers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, small_params

BIN = Path(sys.executable).parent


def dvc(project: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [str(BIN / "dvc"), *args], cwd=project, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def copy_pipeline(project: Path) -> None:
    """The pipeline's code and both dvc.yaml files (root and demo) in `project`, a fresh git + DVC repository."""
    for name in ("dvc.yaml", ".dvcignore", "demo/dvc.yaml"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, project / name)
    for folder in ("stages", "wsss_core", "data/descriptions"):
        shutil.copytree(ROOT / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    dvc(project, "init", "-q")
    dvc(project, "config", "core.analytics", "false")


def demo_clip_params(params: dict) -> dict:
    """`params` reading the demo pipeline's CLIP (tiny here) from its file, as the shipped params do."""
    params["models"]["clip"].update(
        {
            "arch": "demo-clip",
            "pretrained": None,
            "checkpoint": "artifacts/demo_clip/model.safetensors",
            "model_cfg": params["demo"]["clip"]["model_cfg"],
            "random_init": False,
        }
    )
    for run in [*params["cams"]["runs"].values(), *params["adapt"]["runs"].values()]:
        run["caa_layers"] = 1  # the tiny demo CLIP has one block
        if "svc_layers" in run:
            run["svc_layers"] = 1
    return params


ADAPTER_CAMS = ("excel", "excel_adapter", "vda")  # cams.runs of the shipped params that read descriptions or adapters


@pytest.fixture
def dvc_project(tmp_path) -> Path:
    copy_pipeline(tmp_path)
    params = demo_clip_params(small_params())
    # The CLIP-ES, SAMS, FMA-WSSS and retraining chains of the shipped params. ExCEL's and VDA's adapters run end to
    # end, twice, in their presets' tests (tests/test_presets.py), and the shipped DAG is checked whole by `dvc dag`.
    params["seeds"]["variants"] = {name: params["seeds"]["variants"][name] for name in ("cam", "crf")}
    params["cams"]["runs"] = {name: run for name, run in params["cams"]["runs"].items() if name not in ADAPTER_CAMS}
    params["describe"]["runs"], params["adapt"]["runs"] = {}, {}
    params["retrain"]["runs"]["weclip"]["seeds"] = "cam"  # the other variant than the one the test changes below
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


PREDICTIONS = ("plain", "crf", "sams")  # retrain.predict.variants of the shipped params


@pytest.mark.dvc_repro
def test_repro_is_incremental(dvc_project):
    first = stages_run(dvc(dvc_project, "repro"))
    demo = ["demo/dvc.yaml:demo_data", "demo/dvc.yaml:demo_clip"]  # ancestors through dataset.root, the CLIP's file
    assert first.index(demo[0]) < first.index("prepare") and first.index(demo[1]) < first.index("cams@raw")
    seeds_and_metrics = ["evaluate@cam", "evaluate@crf", "seeds@cam", "seeds@crf"]
    sams = ["sam_masks@felzenszwalb", "sams_seeds@sams", "evaluate_sams@sams"]  # the demo's SAMS variant, its masks
    fma = ["learn@classification", "cams@coarse", "sams_seeds@coarse", "evaluate_sams@coarse"]  # FMA-WSSS chain
    fma += ["learn@segmentation", "cams@fine", "sams_seeds@fine", "evaluate_sams@fine"]
    retrain = ["retrain@weclip"]
    retrain += [f"{stage}@{name}" for stage in ("predict", "evaluate_predictions") for name in PREDICTIONS]
    cams = ["cams@raw", "cams@caa"]
    assert sorted(first) == sorted([*demo, "prepare", *cams, *seeds_and_metrics, *sams, *fma, *retrain])
    assert first.index("seeds@cam") < first.index("retrain@weclip") < first.index("predict@plain")
    assert first.index("sams_seeds@coarse") < first.index("learn@segmentation") < first.index("cams@fine")
    assert (dvc_project / "metrics" / "seeds_crf" / "metrics.json").is_file()
    assert not (dvc_project / "reports" / "demo.md").exists()  # the report belongs to the demo pipeline
    assert stages_run(dvc(dvc_project, "repro", "demo/dvc.yaml:demo_report")) == ["demo/dvc.yaml:demo_report"]
    assert "seeds_crf" in (dvc_project / "reports" / "demo.md").read_text()

    assert stages_run(dvc(dvc_project, "repro")) == []

    params = yaml.safe_load((dvc_project / "params.yaml").read_text())
    for device in ("cuda", "cpu"):  # a device is where a stage runs, not what it computes: nothing reruns
        for section in ("cams", "learn", "sam_masks", "retrain"):
            params[section]["device"] = device
        params["retrain"]["checkpoint_every"] = 3 if device == "cuda" else 2  # nor how often it checkpoints
        (dvc_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        assert stages_run(dvc(dvc_project, "repro")) == []

    params["seeds"]["variants"]["crf"]["crf"]["confidence"] = 0.8
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(dvc(dvc_project, "repro")) == ["seeds@crf", "evaluate@crf"]

    params["retrain"]["predict"]["variants"]["crf"]["crf"]["iterations"] = 5  # only that prediction reruns
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(dvc(dvc_project, "repro")) == ["predict@crf", "evaluate_predictions@crf"]

    params["cams"]["runs"]["raw"]["box_threshold"] = 0.5  # one CAM run's setting: that run and its readers
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rerun = stages_run(dvc(dvc_project, "repro"))
    assert rerun[0] == "cams@raw" and sorted(rerun) == sorted(["cams@raw", "seeds@cam", "evaluate@cam", *retrain])

    params["cams"]["runs"]["fine"]["box_threshold"] = 0.6  # only the end of the FMA-WSSS chain reruns
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(dvc(dvc_project, "repro")) == ["cams@fine", "sams_seeds@fine", "evaluate_sams@fine"]
