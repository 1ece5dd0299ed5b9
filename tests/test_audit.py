"""`wsss audit`: the provenance chain is printed, and a changed or missing upstream is caught."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from wsss_core.audit import audit, format_audit
from wsss_core.cli import app
from wsss_core.hashing import sha256_file
from wsss_core.provenance import make_provenance
from wsss_core.store import DenseMapWriter, write_table


@pytest.fixture
def chain(tmp_path, monkeypatch):
    """index.parquet -> labels.zarr -> report/ (provenance.json), with one image and a checkpoint file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    image = tmp_path / "data" / "a.jpg"
    image.write_bytes(b"pretend jpeg")
    index = pa.table(
        {
            "image_id": ["a"],
            "image_path": ["a.jpg"],
            "image_sha256": [sha256_file(image)],
            "mask_path": pa.array([None], pa.string()),
            "mask_sha256": pa.array([None], pa.string()),
        }
    )
    write_table("index.parquet", index, make_provenance("prepare", {"dataset": {}}, details={"root": "data"}))
    checkpoint = tmp_path / "clip.pt"
    checkpoint.write_bytes(b"weights")
    writer = DenseMapWriter(
        "labels.zarr",
        kind="labels",
        image_ids=["a"],
        sizes=[[2, 2]],
        dtype="uint8",
        provenance=make_provenance(
            "seeds",
            {"seeds": {"alpha": 1}},
            upstream={"index": "index.parquet"},
            checkpoints={"clip": {"path": "clip.pt", "sha256": sha256_file(checkpoint)}},
        ),
    )
    writer.write(0, np.ones((2, 2), np.uint8))
    writer.commit()
    (tmp_path / "report").mkdir()
    provenance = make_provenance("evaluate", {}, upstream={"labels": "labels.zarr", "index": "index.parquet"})
    (tmp_path / "report" / "provenance.json").write_text(json.dumps(provenance))
    (tmp_path / "report" / "metrics.json").write_text("{}")
    return tmp_path


def test_chain_is_printed_back_to_the_dataset(chain):
    node = audit("report", name="report")
    assert node.ok
    text = "\n".join(format_audit(node))
    assert "labels: labels.zarr OK [seeds]" in text
    assert text.count("index: index.parquet OK [prepare]") == 2  # reached directly and through the labels
    assert "checkpoint clip: clip.pt OK" in text
    assert '"alpha": 1' in text


def test_cli_catches_a_tampered_upstream(chain):
    runner = CliRunner()
    assert runner.invoke(app, ["audit", "report/metrics.json"]).exit_code == 0
    shard = next(p for p in (chain / "labels.zarr" / "maps" / "c").rglob("*") if p.is_file())
    shard.write_bytes(shard.read_bytes() + b"x")
    result = runner.invoke(app, ["audit", "report"])
    assert result.exit_code == 1
    assert "labels: labels.zarr CHANGED [seeds] (recorded" in result.output
    assert "index: index.parquet OK" in result.output


def test_missing_upstream_and_checkpoint_are_reported(chain):
    (chain / "clip.pt").write_bytes(b"other weights")
    node = audit("labels.zarr")
    assert not node.ok
    assert any("checkpoint clip: clip.pt CHANGED" in line for line in node.checks)
    (chain / "index.parquet").unlink()
    node = audit("report")
    assert [child.status for child in node.children] == ["MISSING", "OK"]


def test_deep_audit_rehashes_dataset_images(chain):
    assert audit("index.parquet", deep=True).ok
    (chain / "data" / "a.jpg").write_bytes(b"edited")
    assert audit("index.parquet").ok  # the index file itself is unchanged
    node = audit("index.parquet", deep=True)
    assert not node.ok
    assert any("a.jpg CHANGED" in line for line in node.checks)


def test_not_an_artifact(tmp_path):
    (tmp_path / "plain.txt").write_text("x")
    result = CliRunner().invoke(app, ["audit", str(tmp_path / "plain.txt")])
    assert result.exit_code == 1
    assert "no provenance found" in result.output
