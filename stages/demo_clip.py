"""demo_clip stage: pretrain the demo's small CLIP on captioned images of the synthetic domain (see wsss_core.demo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import run_stage

app = typer.Typer(add_completion=False)


@app.command()
def main(
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    out_dir: Path = typer.Option(Path("artifacts/demo_clip")),
    curve: Path = typer.Option(Path("metrics/demo_clip/loss.csv"), help="loss curve for dvc plots"),
    device: str = typer.Option(None, help="overrides demo.clip.device (auto: CUDA when present)"),
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.demo.pretrain import pretrain_demo_clip

        settings = params["demo"]["clip"]
        data = params["demo"]["data"]
        domain = {"min_objects": data["min_objects"], "max_objects": data["max_objects"]}
        written = pretrain_demo_clip(
            out_dir, curve, settings, domain, device=device if device is not None else settings["device"]
        )
        log["artifact"] = str(written)

    run_stage("demo_clip", body, params_file, pinned_cpu_from="demo.clip")


if __name__ == "__main__":
    app()
