"""demo_report stage: reports/demo.md (every evaluated artifact's metrics) and reports/demo.png (a few images)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import run_stage

app = typer.Typer(add_completion=False)


@app.command()
def main(
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    metrics_root: Path = typer.Option(Path("metrics")),
    out_dir: Path = typer.Option(Path("reports")),
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.demo.report import pipeline_order, write_demo_report

        written = write_demo_report(metrics_root, out_dir, params["demo"]["report"], pipeline_order(params))
        log["files"] = {name: str(path) for name, path in written.items()}
        print((out_dir / "demo.md").read_text())

    run_stage("demo_report", body, params_file)


if __name__ == "__main__":
    app()
