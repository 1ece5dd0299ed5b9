"""The demo's seed spread: the params each run gets, and the table it reports."""

from __future__ import annotations

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
