"""`wsss audit`: the provenance chain is printed, and a changed or missing upstream is caught."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from wsss_core.audit import audit, format_audit
from wsss_core.cli import app
from wsss_core.hashing import sha256_file
from wsss_core.provenance import make_provenance
from wsss_core.store import DenseMapWriter, read_parquet_provenance, write_table


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


# The artifact audited checks its own content (its seal), not only its upstreams.


def _replace_one_chunk(zarr_dir):
    shard = next(p for p in sorted((zarr_dir / "maps" / "c").rglob("*")) if p.is_file())
    shard.write_bytes(shard.read_bytes()[::-1])  # same size, other bytes: a hand-edited or swapped chunk file
    return shard


@pytest.mark.parametrize("deep", [False, True])
def test_changed_chunk_of_the_audited_dense_artifact_is_caught(chain, deep):
    runner = CliRunner()
    before = runner.invoke(app, ["audit", "labels.zarr", *(["--deep"] if deep else [])])
    assert before.exit_code == 0, before.output
    assert "seal: OK" in before.output.splitlines()[1]  # the artifact's own line, then its seal
    _replace_one_chunk(chain / "labels.zarr")
    result = runner.invoke(app, ["audit", "labels.zarr", *(["--deep"] if deep else [])])
    assert result.exit_code == 1
    assert result.output.startswith("labels.zarr: labels.zarr CHANGED [seeds] (labels.zarr: content changed")
    assert "index: index.parquet OK [prepare]" in result.output  # the upstreams themselves still match


def test_changed_file_of_an_evaluation_report_is_caught(project):
    from tests.test_stages import run_ok
    from wsss_core.data.index import read_index_hashes, read_index_sizes
    from wsss_core.drivers.evaluate import evaluate_label_maps
    from wsss_core.params import load_params

    run_ok("demo_data")
    run_ok("prepare")
    index = project / "artifacts" / "index" / "val.parquet"
    sizes = read_index_sizes(index)
    writer = DenseMapWriter(
        "artifacts/seeds_zero.zarr",
        kind="labels",
        image_ids=list(sizes),
        sizes=list(sizes.values()),
        dtype="uint8",
        image_sha256=list(read_index_hashes(index).values()),
        provenance=make_provenance("seeds", {}, upstream={"index": index}),
    )
    for i, (height, width) in enumerate(sizes.values()):
        writer.write(i, np.zeros((height, width), np.uint8))
    writer.commit()
    report = project / "metrics" / "seeds_zero"
    evaluate_label_maps(Path("artifacts/seeds_zero.zarr"), report, load_params("params.yaml")["evaluate"])
    assert "content_sha256" in json.loads((report / "provenance.json").read_text())
    runner = CliRunner()
    assert runner.invoke(app, ["audit", "metrics/seeds_zero"]).exit_code == 0

    metrics = json.loads((report / "metrics.json").read_text())
    metrics["miou"] = 0.99
    (report / "metrics.json").write_text(json.dumps(metrics))
    for target in ("metrics/seeds_zero", "metrics/seeds_zero/metrics.json"):
        result = runner.invoke(app, ["audit", target])
        assert result.exit_code == 1, result.output
        assert "CHANGED [evaluate] (metrics/seeds_zero: content changed since written" in result.output


def test_changed_rows_of_an_audited_table_are_caught(chain):
    runner = CliRunner()
    assert runner.invoke(app, ["audit", "index.parquet", "--deep"]).exit_code == 0
    recorded = read_parquet_provenance("index.parquet")
    table = pq.read_table("index.parquet")
    metadata = table.schema.metadata
    assert set(metadata) == {b"wsss", b"wsss_content_sha256"}
    rows = table.to_pydict()
    rows["image_path"] = ["b.jpg"]  # a row edited, the provenance and seal kept as they were
    edited = pa.Table.from_pydict(rows, schema=table.schema).replace_schema_metadata(metadata)
    pq.write_table(edited, "index.parquet", compression="zstd")
    assert read_parquet_provenance("index.parquet") == recorded
    for extra in ([], ["--deep"]):
        result = runner.invoke(app, ["audit", "index.parquet", *extra])
        assert result.exit_code == 1, result.output
        assert result.output.startswith("index.parquet: index.parquet CHANGED [prepare] (index.parquet: data changed")


@pytest.mark.parametrize("marker", ["dvc.yaml", ".dvc"])
@pytest.mark.parametrize("absolute", [True, False])
def test_upstreams_resolve_from_the_project_root_wherever_audit_runs(
    chain, tmp_path_factory, monkeypatch, marker, absolute
):
    if marker == ".dvc":
        (chain / ".dvc").mkdir()
    else:
        (chain / "dvc.yaml").write_text("stages: {}\n")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    target = chain / "report" if absolute else Path(os.path.relpath(chain / "report", elsewhere))
    result = CliRunner().invoke(app, ["audit", str(target), "--deep"])
    assert result.exit_code == 0, result.output
    assert "MISSING" not in result.output
    assert "labels: labels.zarr OK [seeds]" in result.output
    assert result.output.count("index: index.parquet OK [prepare]") == 2
    assert "checkpoint clip: clip.pt OK" in result.output
    assert "content: 1 images re-hashed under data, all match" in result.output
    (chain / "index.parquet").unlink()  # and a missing upstream is still reported as such
    node = audit(target)
    assert [child.status for child in node.children] == ["MISSING", "OK"]


def test_artifacts_written_before_seals_audit_as_unsealed(chain):
    runner = CliRunner()
    result = runner.invoke(app, ["audit", "report"])  # the fixture writes provenance.json without a seal
    assert result.exit_code == 0, result.output
    assert "seal: UNSEALED (report: no content seal in provenance.json" in result.output

    meta = chain / "labels.zarr" / "zarr.json"
    attributes = json.loads(meta.read_text())
    attributes["attributes"]["wsss"].pop("content_sha256", None)
    meta.write_text(json.dumps(attributes))
    result = runner.invoke(app, ["audit", "labels.zarr"])
    assert result.exit_code == 0, result.output
    assert "seal: UNSEALED (labels.zarr: no content seal in zarr.json" in result.output

    table = pq.read_table(chain / "index.parquet")
    legacy = table.replace_schema_metadata({b"wsss": table.schema.metadata[b"wsss"]})
    pq.write_table(legacy, chain / "index.parquet", compression="zstd")
    result = runner.invoke(app, ["audit", "index.parquet", "--deep"])
    assert result.exit_code == 0, result.output
    assert "seal: UNSEALED (index.parquet: no content seal in its metadata" in result.output
