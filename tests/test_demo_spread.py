"""The demo's spread across seeds and machines: the params each run gets, the runs kept, the table reported."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tests.conftest import ROOT
from wsss_core.demo.spread import (
    describe_machine,
    merge_runs,
    read_runs,
    seeded_params,
    spread_markdown,
    spread_rows,
)


def test_each_run_changes_only_the_pretraining_seed():
    text = (ROOT / "params.yaml").read_text()
    original, seeded = yaml.safe_load(text), yaml.safe_load(seeded_params(text, 7))
    assert seeded["demo"]["clip"]["seed"] == 7 and original["demo"]["clip"]["seed"] != 7
    seeded["demo"]["clip"]["seed"] = original["demo"]["clip"]["seed"]
    assert seeded == original


def run(machine, seed, **miou):
    return {"machine": machine, "commit": "abc1234def", "seed": seed, "miou": miou}


def test_rows_give_the_spread_across_seeds_and_across_machines_of_artifacts_every_run_evaluated():
    runs = [
        run("amd", 0, seeds_cam=0.36, seeds_crf=0.40, extra=0.1),
        run("amd", 2, seeds_cam=0.30, seeds_crf=0.50),
        run("intel", 0, seeds_cam=0.33, seeds_crf=0.49),
    ]
    rows = spread_rows(runs)
    assert [row["artifact"] for row in rows] == ["seeds_cam", "seeds_crf"]  # "extra": not in every run
    assert rows[0]["miou"] == [0.36, 0.30, 0.33]
    assert abs(rows[0]["across_seeds"] - 0.06) < 1e-12 and abs(rows[0]["across_machines"] - 0.03) < 1e-12
    assert abs(rows[1]["across_seeds"] - 0.10) < 1e-12 and abs(rows[1]["across_machines"] - 0.09) < 1e-12
    table = spread_markdown(runs)
    assert "- A: amd, commit abc1234" in table and "- B: intel, commit abc1234" in table
    assert "| artifact | A seed 0 | A seed 2 | B seed 0 | across seeds | across machines |" in table
    assert "| seeds_cam | 36.0 | 30.0 | 33.0 | 6.0 | 3.0 |" in table
    # one machine: no spread across machines; one seed per machine: none across seeds
    assert spread_rows(runs[:2])[0]["across_machines"] is None
    assert "| seeds_cam | 36.0 | 33.0 | - | 3.0 |" in spread_markdown([runs[0], runs[2]])


def test_a_new_run_replaces_the_run_of_its_machine_and_seed_and_keeps_the_others_in_order():
    old = [run("amd", 0, seeds_cam=0.1), run("amd", 2, seeds_cam=0.2), run("intel", 1, seeds_cam=0.5)]
    new = [run("intel", 0, seeds_cam=0.3), run("amd", 2, seeds_cam=0.4), run("arm", 0, seeds_cam=0.6)]
    assert [(r["machine"], r["seed"], r["miou"]["seeds_cam"]) for r in merge_runs(old, new)] == [
        ("amd", 0, 0.1),
        ("amd", 2, 0.4),
        ("intel", 0, 0.3),
        ("intel", 1, 0.5),
        ("arm", 0, 0.6),
    ]


def test_the_machine_is_named_by_its_cpu_model_vendor_and_core_count(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\n\nprocessor\t: 1\n")
    assert describe_machine(cpuinfo) == f"AMD EPYC 9B14 (AuthenticAMD, {os.cpu_count()} CPUs)"
    assert "unknown vendor" in describe_machine(tmp_path / "missing")


def test_an_older_report_without_machines_is_refused_by_name(tmp_path):
    import pytest

    report = tmp_path / "demo_spread.json"
    assert read_runs(report) == []
    report.write_text('{"seeds": [0], "rows": []}')
    with pytest.raises(ValueError, match="demo_spread.json: no 'runs'"):
        read_runs(report)


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


def test_measuring_adds_this_machines_runs_to_the_report(tmp_path, monkeypatch):
    import json

    from wsss_core.demo import spread

    monkeypatch.setattr(spread, "run_with_seed", lambda repo, seed, work: {"seeds_cam": 0.3 + seed / 100})
    monkeypatch.setattr(spread, "describe_machine", lambda: "intel")
    out = tmp_path / "reports"
    out.mkdir()
    (out / "demo_spread.json").write_text(json.dumps({"runs": [run("amd", 0, seeds_cam=0.36)]}))
    spread.measure_spread(ROOT, [0, 1], out)
    runs = json.loads((out / "demo_spread.json").read_text())["runs"]
    assert [(r["machine"], r["seed"]) for r in runs] == [("amd", 0), ("intel", 0), ("intel", 1)]
    assert len(runs[1]["commit"]) == 40
    assert "| seeds_cam | 36.0 | 30.0 | 31.0 | 1.0 | 6.0 |" in (out / "demo_spread.md").read_text()
    spread.measure_spread(ROOT, [2], out, replace=True)
    assert [r["seed"] for r in json.loads((out / "demo_spread.json").read_text())["runs"]] == [2]
