"""cams stage: one CAM run (`cams.runs.<name>`, any method of wsss_core.cam.methods) on the training split
-> artifacts/cams_<name>.zarr."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import ADDRESS_OPTION, ENGINE_OPTION, apply_engine_options, run_stage

app = typer.Typer(add_completion=False)


@app.command()
def main(
    name: str = typer.Argument(..., help="a key of cams.runs"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    index_dir: Path = typer.Option(Path("artifacts/index")),
    out: Path = typer.Option(None, help="default: artifacts/cams_<name>.zarr"),
    device: str = typer.Option(None, help="overrides cams.device (auto: CUDA when present)"),
    engine: str = ENGINE_OPTION,
    address: str = ADDRESS_OPTION,
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.drivers.cams import write_cams
        from wsss_core.params import require_entry

        require_entry(params, "cams.runs", name)
        apply_engine_options(params, engine, address)
        if device is not None:
            params["cams"]["device"] = device
        split = params["dataset"]["train_split"]
        written = write_cams(name, index_dir / f"{split}.parquet", out or Path(f"artifacts/cams_{name}.zarr"), params)
        log["artifacts"] = {"cams": str(written)}

    run_stage(f"cams_{name}", body, params_file)


if __name__ == "__main__":
    app()
