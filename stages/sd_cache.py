"""sd_cache stage: one TSA cache run (`sd_cache.runs.<name>`, DiCLIP): single-class images drawn with Stable
Diffusion, their masks, keys and values -> artifacts/sd_cache_<name>/.

One GPU:               python stages/sd_cache.py NAME            (or dvc repro)
Every GPU of a cluster: python stages/sd_cache.py NAME --engine ray --address auto   (README: Scaling out)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import ADDRESS_OPTION, ENGINE_OPTION, apply_engine_options, run_stage

app = typer.Typer(add_completion=False)


@app.command()
def main(
    name: str = typer.Argument(..., help="a key of sd_cache.runs"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    index_dir: Path = typer.Option(Path("artifacts/index")),
    out: Path = typer.Option(None, help="default: artifacts/sd_cache_<name>"),
    device: str = typer.Option(None, help="overrides sd_cache.device (auto: CUDA when present)"),
    engine: str = ENGINE_OPTION,
    address: str = ADDRESS_OPTION,
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.drivers.sd_cache import build_sd_cache
        from wsss_core.params import require_entry

        require_entry(params, "sd_cache.runs", name)
        apply_engine_options(params, engine, address)
        if device is not None:
            params["sd_cache"]["device"] = device
        split = params["dataset"]["train_split"]
        out_dir = out or Path(f"artifacts/sd_cache_{name}")
        log["cache"] = build_sd_cache(name, index_dir / f"{split}.parquet", out_dir, params)

    run_stage(f"sd_cache_{name}", body, params_file)


if __name__ == "__main__":
    app()
