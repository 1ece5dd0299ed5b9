"""sam_masks stage: one mask run (`sam_masks.runs.<name>`: SAM, or Felzenszwalb without weights), class-agnostic
masks -> artifacts/masks_<name>/<split>/.

One GPU:               python stages/sam_masks.py NAME            (or dvc repro)
Every GPU of a cluster: python stages/sam_masks.py NAME --engine ray --address auto   (README: Scaling out)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import ADDRESS_OPTION, ENGINE_OPTION, apply_engine_options, run_stage

app = typer.Typer(add_completion=False)


@app.command()
def main(
    name: str = typer.Argument(..., help="a key of sam_masks.runs"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    index_dir: Path = typer.Option(Path("artifacts/index")),
    out: Path = typer.Option(None, help="default: artifacts/masks_<name>"),
    reports: Path = typer.Option(None, help="overlay pictures; default: reports/masks_<name>"),
    device: str = typer.Option(None, help="overrides sam_masks.device (auto: CUDA when present)"),
    engine: str = ENGINE_OPTION,
    address: str = ADDRESS_OPTION,
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.data.index import read_index
        from wsss_core.drivers.masks import generate_masks, mask_splits
        from wsss_core.masks.overlay import write_overlays
        from wsss_core.masks.records import MaskSet
        from wsss_core.params import require_entry
        from wsss_core.store.atomic import atomic_directory

        settings = require_entry(params, "sam_masks.runs", name)
        apply_engine_options(params, engine, address)
        out_dir, reports_dir = out or Path(f"artifacts/masks_{name}"), reports or Path(f"reports/masks_{name}")
        generate_masks(
            index_dir,
            out_dir,
            params["dataset"],
            settings,
            device or params["sam_masks"]["device"],
            params["engine"],
            key=f"sam_masks.runs.{name}",
        )
        splits = mask_splits(params["dataset"], settings)
        log["masks"] = {split: int(MaskSet(out_dir / split).n_masks.sum()) for split in splits}
        with atomic_directory(reports_dir) as pictures:
            for split in splits:
                paths = {s.image_id: s.image_path for s in read_index(index_dir / f"{split}.parquet").samples}
                write_overlays(out_dir / split, paths, pictures, settings["overlays"])

    run_stage(f"masks_{name}", body, params_file)


if __name__ == "__main__":
    app()
