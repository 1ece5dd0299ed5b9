"""SAMS seeds stage: one variant of seeds.sams.variants (CAMs + artifacts/sam_masks) -> artifacts/seeds_<name>.zarr."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import run_stage

app = typer.Typer(add_completion=False)


@app.command()
def main(
    name: str = typer.Argument(..., help="a key of seeds.sams.variants in params.yaml"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    artifacts: Path = typer.Option(Path("artifacts")),
    masks: Path = typer.Option(Path("artifacts/sam_masks"), help="the sam_masks artifact (computed or imported)"),
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.params import ParamsError
        from wsss_core.seeding.sams_seeds import make_sams_seeds

        variants = params["seeds"]["sams"]["variants"]
        if name not in variants:
            raise ParamsError(f"seeds.sams.variants.{name}: no such SAMS variant; defined: {', '.join(variants)}")
        if name in params["seeds"]["variants"]:
            raise ParamsError(
                f"seeds.sams.variants.{name}: seeds.variants has this name too; both would write "
                f"artifacts/seeds_{name}.zarr"
            )
        settings = variants[name]
        make_sams_seeds(artifacts / f"{settings['cams']}.zarr", masks, artifacts / f"seeds_{name}.zarr", name, settings)

    run_stage(f"seeds_{name}", body, params_file)


if __name__ == "__main__":
    app()
