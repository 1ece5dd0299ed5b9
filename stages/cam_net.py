"""cam_net stage: train one CAM network (`cam_nets.runs.<name>`, a method of wsss_core.camnet: WeakTr) on the
training split's image-level labels -> artifacts/camnet_<name>/, curves in metrics/camnet_<name>/ for `dvc plots`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import run_stage

app = typer.Typer(add_completion=False)


@app.command()
def main(
    name: str = typer.Argument(..., help="a key of cam_nets.runs"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    index_dir: Path = typer.Option(Path("artifacts/index")),
    artifacts: Path = typer.Option(Path("artifacts")),
    metrics: Path = typer.Option(Path("metrics")),
    device: str = typer.Option(None, help="overrides cam_nets.device (auto: CUDA when present)"),
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.params import require_entry

        require_entry(params, "cam_nets.runs", name)
        from wsss_core.drivers.cam_nets import train_cam_net

        if device is not None:
            params["cam_nets"]["device"] = device
        split = params["dataset"]["train_split"]
        written = train_cam_net(name, index_dir / f"{split}.parquet", artifacts, metrics, params)
        log["artifacts"] = {"camnet": str(written)}

    run_stage(f"cam_net_{name}", body, params_file, pinned_cpu_from="cam_nets")


if __name__ == "__main__":
    app()
