"""retrain stage: one retraining run (`retrain.runs.<name>`: a segmentation network trained on a seed artifact)
-> artifacts/segmenter_<name>/, with its loss curve in metrics/retrain_<name>/curve.csv for `dvc plots`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import run_stage

app = typer.Typer(add_completion=False)


@app.command()
def main(
    name: str = typer.Argument(..., help="a key of retrain.runs"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    artifacts: Path = typer.Option(Path("artifacts")),
    out_dir: Path = typer.Option(None, help="default: artifacts/segmenter_<name>"),
    curve: Path = typer.Option(
        None, help="loss/lr per update, for dvc plots; default: metrics/retrain_<name>/curve.csv"
    ),
    device: str = typer.Option(None, help="overrides retrain.device (auto: CUDA when present)"),
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.params import require_entry

        require_entry(params, "retrain.runs", name)
        from wsss_core.drivers.retrain import retrain

        if device is not None:
            params["retrain"]["device"] = device
        out = out_dir or artifacts / f"segmenter_{name}"
        retrain(params, name, artifacts, out, curve or Path("metrics") / f"retrain_{name}" / "curve.csv")
        log["artifact"] = str(out)

    run_stage(f"retrain_{name}", body, params_file, pinned_cpu_from="retrain")


if __name__ == "__main__":
    app()
