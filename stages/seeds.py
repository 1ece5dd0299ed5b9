"""seeds stage: one seed variant (params seeds.variants.<name>) from a CAM artifact -> artifacts/seeds_<name>.zarr."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import run_stage

app = typer.Typer(add_completion=False)


@app.command()
def main(
    name: str = typer.Argument(..., help="a key of seeds.variants in params.yaml"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    artifacts: Path = typer.Option(Path("artifacts")),
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.drivers.seeds import make_seeds
        from wsss_core.params import ParamsError

        variants = params["seeds"]["variants"]
        if name not in variants:
            sams = params["seeds"].get("sams", {}).get("variants", {})
            hint = f" ({name} is a SAMS variant: run stages/sams_seeds.py {name})" if name in sams else ""
            raise ParamsError(f"seeds.variants.{name}: no such variant; defined: {', '.join(variants)}{hint}")
        settings = variants[name]
        make_seeds(artifacts / f"{settings['cams']}.zarr", artifacts / f"seeds_{name}.zarr", name, settings)

    run_stage(f"seeds_{name}", body, params_file)


if __name__ == "__main__":
    app()
