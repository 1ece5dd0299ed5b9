"""retrain stage: train the segmentation network (params retrain.network) on a seed artifact (retrain.seeds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import run_stage

app = typer.Typer(add_completion=False)


@app.command()
def main(
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    artifacts: Path = typer.Option(Path("artifacts")),
    out_dir: Path = typer.Option(Path("artifacts/segmenter")),
    curve: Path = typer.Option(Path("metrics/retrain/curve.csv"), help="loss/lr per update, for dvc plots"),
    device: str = typer.Option(None, help="overrides retrain.device (auto: CUDA when present)"),
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        if params["retrain"]["pinned_cpu"]:
            from wsss_core.pinned_cpu import pin_cpu

            pin_cpu()  # before torch loads
        from wsss_core.drivers.retrain import retrain

        if device is not None:
            params["retrain"]["device"] = device
        retrain(params, artifacts, out_dir, curve)
        log["artifact"] = str(out_dir)

    run_stage("retrain", body, params_file)


if __name__ == "__main__":
    app()
