"""predict stage: one prediction variant (params retrain.predict.variants.<name>) on the eval split, with the trained
model its `segmenter` names (a retrain run's artifacts/segmenter_<run>, or an adapter, artifacts/adapter_<run>)
-> artifacts/predictions_<name>.zarr, scored by `stages/evaluate.py predictions_<name>`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import ADDRESS_OPTION, ENGINE_OPTION, apply_engine_options, run_stage

app = typer.Typer(add_completion=False)


@app.command()
def main(
    name: str = typer.Argument(..., help="a key of retrain.predict.variants in params.yaml"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    index_dir: Path = typer.Option(Path("artifacts/index")),
    segmenter: Path = typer.Option(None, help="default: the variant's segmenter"),
    artifacts: Path = typer.Option(Path("artifacts")),
    device: str = typer.Option(None, help="overrides retrain.device (auto: CUDA when present)"),
    engine: str = ENGINE_OPTION,
    address: str = ADDRESS_OPTION,
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.params import require_entry

        variant = require_entry(params, "retrain.predict.variants", name)
        apply_engine_options(params, engine, address)
        from wsss_core.drivers.predict import write_predictions

        if device is not None:
            params["retrain"]["device"] = device
        split = params["dataset"]["eval_split"]
        out = write_predictions(
            params,
            name,
            segmenter or Path(variant["segmenter"]),
            index_dir / f"{split}.parquet",
            artifacts / f"predictions_{name}.zarr",
        )
        log["artifact"] = str(out)

    run_stage(f"predict_{name}", body, params_file, pinned_cpu_from="retrain")


if __name__ == "__main__":
    app()
