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


@pytest.fixture
def dvc_project(tmp_path) -> Path:
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    for folder in ("stages", "wsss_core"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    params = small_params()
    params["seeds"]["variants"] = {"cam": params["seeds"]["variants"]["cam"], "crf": params["seeds"]["variants"]["crf"]}
    params["retrain"]["seeds"] = "cam"  # retrain from the other variant than the one the test changes below
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc(tmp_path, "init", "-q")
    dvc(tmp_path, "config", "core.analytics", "false")
    return tmp_path


PREDICTIONS = ("plain", "crf", "sams")  # retrain.predict.variants of the shipped params


def test_repro_is_incremental(dvc_project):
    first = stages_run(dvc(dvc_project, "repro"))
    assert first.index("demo_data") < first.index("prepare") and first.index("demo_clip") < first.index("cams")
    assert first[-1] == "demo_report"  # reads every metrics directory, so it runs last
    seeds_and_metrics = ["evaluate@cam", "evaluate@crf", "seeds@cam", "seeds@crf"]
    sams = ["sam_masks", "sams_seeds@sams", "evaluate_sams@sams"]  # the demo's SAMS variant and its masks
    fma = ["learn_classification", "cams_coarse", "sams_seeds@coarse", "evaluate_sams@coarse"]  # FMA-WSSS chain
    fma += ["learn_segmentation", "cams_fine", "sams_seeds@fine", "evaluate_sams@fine"]
    retrain = ["retrain"] + [f"{stage}@{name}" for stage in ("predict", "evaluate_predictions") for name in PREDICTIONS]
    demo = ["demo_data", "prepare", "demo_clip", "demo_report"]
    assert sorted(first) == sorted([*demo, "cams", *seeds_and_metrics, *sams, *fma, *retrain])
    assert first.index("seeds@cam") < first.index("retrain") < first.index("predict@plain")
    assert first.index("sams_seeds@coarse") < first.index("learn_segmentation") < first.index("cams_fine")
    assert (dvc_project / "metrics" / "seeds_crf" / "metrics.json").is_file()

    assert stages_run(dvc(dvc_project, "repro")) == []

    params = yaml.safe_load((dvc_project / "params.yaml").read_text())
    params["seeds"]["variants"]["crf"]["crf"]["confidence"] = 0.8
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(dvc(dvc_project, "repro")) == ["seeds@crf", "evaluate@crf", "demo_report"]

    params["retrain"]["predict"]["variants"]["crf"]["crf"]["iterations"] = 5  # only that prediction reruns
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(dvc(dvc_project, "repro")) == ["predict@crf", "evaluate_predictions@crf", "demo_report"]

    params["cams"]["box_threshold"] = 0.5
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rerun = stages_run(dvc(dvc_project, "repro"))
    assert rerun[0] == "cams" and "prepare" not in rerun and "demo_data" not in rerun and "demo_clip" not in rerun

    params["learn"]["fine_cams"]["box_threshold"] = 0.6  # only the end of the FMA-WSSS chain reruns
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rerun = stages_run(dvc(dvc_project, "repro"))
    assert rerun == ["cams_fine", "sams_seeds@fine", "evaluate_sams@fine", "demo_report"]
