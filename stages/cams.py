"""cams stage: class activation maps for the training split (CLIP-ES: Softmax-GradCAM and its CAA refinement)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import run_stage

app = typer.Typer(add_completion=False)


@app.command()
def main(
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    index_dir: Path = typer.Option(Path("artifacts/index")),
    out_dir: Path = typer.Option(Path("artifacts")),
    device: str = typer.Option(None, help="overrides cams.device (auto: CUDA when present)"),
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.cam.generate import generate_cams

        if device is not None:
            params["cams"]["device"] = device
        split = params["dataset"]["train_split"]
        written = generate_cams(index_dir / f"{split}.parquet", out_dir, params)
        log["artifacts"] = {name: str(path) for name, path in written.items()}

    run_stage("cams", body, params_file)


if __name__ == "__main__":
    app()
