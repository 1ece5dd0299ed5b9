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
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc(tmp_path, "init", "-q")
    dvc(tmp_path, "config", "core.analytics", "false")
    return tmp_path


def test_repro_is_incremental(dvc_project):
    first = stages_run(dvc(dvc_project, "repro"))
    assert first[:3] == ["demo_data", "prepare", "cams"]
    assert sorted(first[3:]) == ["evaluate@cam", "evaluate@crf", "seeds@cam", "seeds@crf"]
    assert (dvc_project / "metrics" / "seeds_crf" / "metrics.json").is_file()

    assert stages_run(dvc(dvc_project, "repro")) == []

    params = yaml.safe_load((dvc_project / "params.yaml").read_text())
    params["seeds"]["variants"]["crf"]["crf"]["confidence"] = 0.8
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(dvc(dvc_project, "repro")) == ["seeds@crf", "evaluate@crf"]

    params["cams"]["box_threshold"] = 0.5
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rerun = stages_run(dvc(dvc_project, "repro"))
    assert rerun[0] == "cams" and "prepare" not in rerun and "demo_data" not in rerun
