"""net_cams stage: the CAMs of a trained CAM network (`cam_nets.cams.<name>`, reading artifacts/camnet_<run>) on the
training split -> artifacts/cams_<name>.zarr, at image size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import ADDRESS_OPTION, ENGINE_OPTION, apply_engine_options, run_stage

app = typer.Typer(add_completion=False)


@app.command()
def main(
    name: str = typer.Argument(..., help="a key of cam_nets.cams"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    index_dir: Path = typer.Option(Path("artifacts/index")),
    out: Path = typer.Option(None, help="default: artifacts/cams_<name>.zarr"),
    device: str = typer.Option(None, help="overrides cam_nets.device (auto: CUDA when present)"),
    engine: str = ENGINE_OPTION,
    address: str = ADDRESS_OPTION,
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.params import require_entry

        require_entry(params, "cam_nets.cams", name)
        apply_engine_options(params, engine, address)
        from wsss_core.drivers.cam_nets import write_net_cams

        if device is not None:
            params["cam_nets"]["device"] = device
        split = params["dataset"]["train_split"]
        out_path = out or Path(f"artifacts/cams_{name}.zarr")
        written = write_net_cams(name, index_dir / f"{split}.parquet", out_path, params)
        log["artifacts"] = {"cams": str(written)}

    run_stage(f"net_cams_{name}", body, params_file, pinned_cpu_from="cam_nets")


if __name__ == "__main__":
    app()
