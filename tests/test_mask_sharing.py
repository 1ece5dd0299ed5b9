"""Sharing masks between teams with DVC: one repository computes and pushes them, another imports and uses them.

Repository A runs sam_masks and pushes to a local directory remote. Repository B -- its own git repository, with
the same pipeline minus the sam_masks stage -- `dvc import`s the masks at A's commit and runs SAMS seeds without
computing a single mask; with other images, B's seeds stage refuses the imported masks by name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import ROOT, small_params
from tests.test_dvc_pipeline import BIN, dvc, stages_run
from wsss_core.hashing import sha256_path

GIT_IDENTITY = ["-c", "user.name=wsss test", "-c", "user.email=test@example.invalid"]


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", *GIT_IDENTITY, *args], cwd=repo, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def new_repository(path: Path, params: dict, with_sam_masks_stage: bool) -> Path:
    path.mkdir()
    shutil.copy(ROOT / ".dvcignore", path / ".dvcignore")
    for folder in ("stages", "wsss_core"):
        shutil.copytree(ROOT / folder, path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    if not with_sam_masks_stage:
        del pipeline["stages"]["sam_masks"]  # the masks come from the import instead
    (path / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(path, "init", "-q")
    dvc(path, "init", "-q")
    dvc(path, "config", "core.analytics", "false")
    return path


def demo_params() -> dict:
    params = small_params()
    params["seeds"]["variants"] = {"cam": params["seeds"]["variants"]["cam"]}
    params["sam_masks"]["eval_split"] = False
    return params


def test_masks_pushed_by_one_repository_are_imported_and_used_by_another(tmp_path):
    remote = tmp_path / "remote"
    team_a = new_repository(tmp_path / "team_a", demo_params(), with_sam_masks_stage=True)
    dvc(team_a, "remote", "add", "-d", "shared", str(remote))
    assert stages_run(dvc(team_a, "repro", "sam_masks")) == ["demo_data", "prepare", "sam_masks"]
    git(team_a, "add", "-A")
    git(team_a, "commit", "-q", "-m", "masks of the demo dataset")
    dvc(team_a, "push")
    revision = git(team_a, "rev-parse", "HEAD")
    shutil.rmtree(team_a / ".dvc" / "cache")  # the import must come through the remote

    team_b = new_repository(tmp_path / "team_b", demo_params(), with_sam_masks_stage=False)
    (team_b / "artifacts").mkdir()
    dvc(team_b, "import", str(team_a), "artifacts/sam_masks", "-o", "artifacts/sam_masks", "--rev", revision)
    lock = yaml.safe_load((team_b / "artifacts" / "sam_masks.dvc").read_text())
    assert lock["deps"][0]["repo"]["rev_lock"] == revision  # pinned to team A's commit
    assert sha256_path(team_b / "artifacts/sam_masks") == sha256_path(team_a / "artifacts/sam_masks")

    ran = stages_run(dvc(team_b, "repro", "sams_seeds@sams"))
    # No mask computed here. demo_clip depends on no other stage, so DVC may run it before or after the data.
    assert sorted(ran) == ["cams", "demo_clip", "demo_data", "prepare", "sams_seeds@sams"]
    assert ran.index("demo_data") < ran.index("prepare") and ran[-2:] == ["cams", "sams_seeds@sams"]
    assert (team_b / "artifacts" / "seeds_sams.zarr" / "zarr.json").is_file()

    # Team B's data changes (another draw of the demo set): the imported masks no longer fit and are refused.
    params = demo_params()
    params["dataset"]["synthetic"]["seed"] = 1
    (team_b / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(team_b, "repro", "cams")  # the CAMs follow the new images (stale ones would be refused first); masks do not
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [str(BIN / "dvc"), "repro", "--single-item", "sams_seeds@sams"],
        cwd=team_b, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert "masks of image 'syn_000001' were computed for different content" in result.stdout + result.stderr
