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
    masks: Path = typer.Option(None, help="default: artifacts/masks_<the variant's masks> (computed or imported)"),
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.drivers.sams_seeds import make_sams_seeds
        from wsss_core.params import require_entry

        settings = require_entry(params, "seeds.sams.variants", name)
        masks_dir = masks or artifacts / f"masks_{settings['masks']}"
        cams = artifacts / f"{settings['cams']}.zarr"
        make_sams_seeds(cams, masks_dir, artifacts / f"seeds_{name}.zarr", name, settings)

    run_stage(f"seeds_{name}", body, params_file)


if __name__ == "__main__":
    app()
