"""evaluate stage: score any artifact of label maps (seeds, CAM-derived labels, predictions) against GT.

Writes metrics/<name>/: metrics.json (for `dvc metrics`), per_class.csv (for `dvc plots`), confusion.png,
and provenance.json (what was evaluated, against which index). The GT split is the one the label maps were
made for, read from their provenance, so seeds are scored on the training split and predictions on val.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import run_stage

app = typer.Typer(add_completion=False)


@app.command()
def main(
    name: str = typer.Argument(..., help="artifact name: reads artifacts/<name>.zarr, writes metrics/<name>/"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    artifacts: Path = typer.Option(Path("artifacts")),
    out_root: Path = typer.Option(Path("metrics")),
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.drivers.evaluate import evaluate_label_maps

        summary = evaluate_label_maps(artifacts / f"{name}.zarr", out_root / name, params["evaluate"])
        log.update({"miou": summary["miou"], "n_images": summary["n_images"]})
        print(f"evaluate {name}: mIoU {100 * summary['miou']:.2f} on {summary['n_images']} images")

    run_stage(f"evaluate_{name}", body, params_file)


if __name__ == "__main__":
    app()
