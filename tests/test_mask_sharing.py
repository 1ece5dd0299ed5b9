"""Sharing masks between teams with DVC: one repository computes and pushes them, another imports and uses them.

Repository A runs the mask run sam_masks@felzenszwalb and pushes to a local directory remote. Repository B -- its own
git repository, with the same pipeline minus the sam_masks stages -- `dvc import`s artifacts/masks_felzenszwalb at A's
commit and runs SAMS seeds without computing a single mask; with other images, B's seeds stage refuses the imported
masks by name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, TINY_DEMO_CLIP_CFG, small_params
from tests.test_dvc_pipeline import BIN, dvc, stages_run
from wsss_core.hashing import sha256_path
from wsss_core.params import SECTIONS, validate_section
from wsss_core.params.pipeline import check_pipeline

GIT_IDENTITY = ["-c", "user.name=wsss test", "-c", "user.email=test@example.invalid"]


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", *GIT_IDENTITY, *args], cwd=repo, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def new_repository(path: Path, params: dict, with_sam_masks_stage: bool) -> Path:
    path.mkdir()
    shutil.copy(ROOT / ".dvcignore", path / ".dvcignore")
    (path / "demo").mkdir()
    shutil.copy(ROOT / "demo" / "dvc.yaml", path / "demo" / "dvc.yaml")  # the demo's data and CLIP
    for folder in ("stages", "wsss_core"):
        shutil.copytree(ROOT / folder, path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    if not with_sam_masks_stage:
        del pipeline["stages"]["sam_masks"]  # the masks come from the import instead (the run stays in params)
    (path / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(path, "init", "-q")
    dvc(path, "init", "-q")
    dvc(path, "config", "core.analytics", "false")
    return path


def demo_params() -> dict:
    """small_params on the demo CLIP (dvc.yaml tracks models.clip.checkpoint: a null one is no path), with one mask
    run of the training split only, and only the stages of the SAMS seeds (and the seed variant cam)."""
    params = small_params()
    params["models"]["clip"].update(
        {
            "arch": "demo-clip",
            "checkpoint": "artifacts/demo_clip/model.safetensors",
            "model_cfg": TINY_DEMO_CLIP_CFG,
            "random_init": False,
        }
    )
    params["cams"]["runs"] = {"raw": params["cams"]["runs"]["raw"], "caa": params["cams"]["runs"]["caa"]}
    for run in params["cams"]["runs"].values():
        run["caa_layers"] = 1  # the tiny demo CLIP has one block
    params["learn"]["runs"] = {}
    params["seeds"]["variants"] = {"cam": params["seeds"]["variants"]["cam"]}
    params["seeds"]["sams"]["variants"] = {"sams": params["seeds"]["sams"]["variants"]["sams"]}
    params["sam_masks"]["runs"]["felzenszwalb"]["eval_split"] = False
    params["retrain"]["runs"]["weclip"]["seeds"] = "cam"
    params["retrain"]["predict"]["variants"] = {"plain": params["retrain"]["predict"]["variants"]["plain"]}
    check_pipeline(validated(params), files=False)  # what every stage checks first
    return params


def validated(params: dict) -> dict:
    return {name: validate_section(params.get(name), schema, name) for name, schema in SECTIONS.items()}


@pytest.mark.dvc_repro
def test_masks_pushed_by_one_repository_are_imported_and_used_by_another(tmp_path):
    remote = tmp_path / "remote"
    team_a = new_repository(tmp_path / "team_a", demo_params(), with_sam_masks_stage=True)
    dvc(team_a, "remote", "add", "-d", "shared", str(remote))
    ran = stages_run(dvc(team_a, "repro", "sam_masks@felzenszwalb"))
    assert ran == ["demo/dvc.yaml:demo_data", "prepare", "sam_masks@felzenszwalb"]
    git(team_a, "add", "-A")
    git(team_a, "commit", "-q", "-m", "masks of the demo dataset")
    dvc(team_a, "push")
    revision = git(team_a, "rev-parse", "HEAD")
    shutil.rmtree(team_a / ".dvc" / "cache")  # the import must come through the remote

    team_b = new_repository(tmp_path / "team_b", demo_params(), with_sam_masks_stage=False)
    (team_b / "artifacts").mkdir()
    masks = "artifacts/masks_felzenszwalb"
    dvc(team_b, "import", str(team_a), masks, "-o", masks, "--rev", revision)
    lock = yaml.safe_load((team_b / "artifacts" / "masks_felzenszwalb.dvc").read_text())
    assert lock["deps"][0]["repo"]["rev_lock"] == revision  # pinned to team A's commit
    assert sha256_path(team_b / masks) == sha256_path(team_a / masks)

    ran = stages_run(dvc(team_b, "repro", "sams_seeds@sams"))
    # No mask computed here. demo_clip depends on no other stage, so DVC may run it before or after the data.
    data, clip = "demo/dvc.yaml:demo_data", "demo/dvc.yaml:demo_clip"
    assert sorted(ran) == sorted([data, clip, "prepare", "cams@caa", "sams_seeds@sams"])
    assert ran.index(data) < ran.index("prepare") and ran[-2:] == ["cams@caa", "sams_seeds@sams"]
    assert (team_b / "artifacts" / "seeds_sams.zarr" / "zarr.json").is_file()

    # Team B's data changes (another draw of the demo set): the imported masks no longer fit and are refused.
    params = demo_params()
    params["demo"]["data"]["seed"] = 1
    (team_b / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(team_b, "repro", "cams@caa")  # the CAMs follow the new images (stale ones would be refused first); masks do not
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [str(BIN / "dvc"), "repro", "--single-item", "sams_seeds@sams"],
        cwd=team_b, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert "masks of image 'syn_000001' were computed for different content" in result.stdout + result.stderr
