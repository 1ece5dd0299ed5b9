"""The demo's seed spread: the params each run gets, and the table it reports."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tests.conftest import ROOT
from wsss_core.demo.spread import seeded_params, spread_markdown, spread_rows


def test_each_run_changes_only_the_pretraining_seed():
    text = (ROOT / "params.yaml").read_text()
    original, seeded = yaml.safe_load(text), yaml.safe_load(seeded_params(text, 7))
    assert seeded["demo"]["clip"]["seed"] == 7 and original["demo"]["clip"]["seed"] != 7
    seeded["demo"]["clip"]["seed"] = original["demo"]["clip"]["seed"]
    assert seeded == original


def test_rows_give_each_seed_the_mean_and_the_spread_of_artifacts_every_seed_evaluated():
    results = {2: {"seeds_cam": 0.30, "seeds_crf": 0.5}, 0: {"seeds_cam": 0.36, "seeds_crf": 0.4, "extra": 0.1}}
    rows = spread_rows(results)
    assert [row["artifact"] for row in rows] == ["seeds_cam", "seeds_crf"]  # "extra": not evaluated under seed 2
    assert rows[0]["miou"] == {0: 0.36, 2: 0.30}
    assert abs(rows[0]["mean"] - 0.33) < 1e-12 and abs(rows[0]["spread"] - 0.06) < 1e-12
    table = spread_markdown(results)
    assert "| artifact | seed 0 | seed 2 | mean | spread (max - min) |" in table
    assert "| seeds_cam | 36.0 | 30.0 | 33.0 | 6.0 |" in table and "| seeds_crf | 40.0 | 50.0 | 45.0 | 10.0 |" in table


def test_each_run_imports_the_code_of_its_worktree(tmp_path, monkeypatch):
    """The stages of a seed's run must import the worktree's wsss_core (HEAD), not the editable install, which
    points at the working tree with whatever is uncommitted there."""
    import json
    import subprocess

    from wsss_core.demo import spread

    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "params.yaml").write_text("demo: {clip: {seed: 0}}\n")
    seen = {}

    def fake_run(command, cwd=None, env=None, **_):
        if command[:1] == ["git"] and "add" in command:
            tree = Path(command[-2])
            (tree / "metrics" / "seeds_cam").mkdir(parents=True)
        if command == ["dvc", "repro"]:
            seen["pythonpath"] = env["PYTHONPATH"].split(os.pathsep)[0]
            seen["cwd"] = str(cwd)
            (Path(cwd) / "metrics" / "seeds_cam" / "metrics.json").write_text(json.dumps({"miou": 0.5}))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(spread.subprocess, "run", fake_run)
    figures = spread.run_with_seed(tmp_path / "repo", 3, tmp_path / "work")
    assert figures == {"seeds_cam": 0.5}
    assert seen["pythonpath"] == seen["cwd"] == str(tmp_path / "work" / "seed_3")
