"""adapt stage: one adapter-learning run (`adapt.runs.<name>`, a method of wsss_core.adapter: ExCEL's single-stage
training on the frozen CLIP) on the training split -> artifacts/adapter_<name>/.

The run reads the artifact its `reads` names (excel: the attribute bank of a describe run). Loss and learning-rate
curves go to metrics/adapt_<name>/ for `dvc plots`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import run_stage

app = typer.Typer(add_completion=False)


@app.command()
def main(
    name: str = typer.Argument(..., help="a key of adapt.runs"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    index_dir: Path = typer.Option(Path("artifacts/index")),
    artifacts: Path = typer.Option(Path("artifacts")),
    metrics: Path = typer.Option(Path("metrics")),
    device: str = typer.Option(None, help="overrides adapt.device (auto: CUDA when present)"),
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.drivers.adapt import adapt
        from wsss_core.params import require_entry

        require_entry(params, "adapt.runs", name)
        if device is not None:
            params["adapt"]["device"] = device
        split = params["dataset"]["train_split"]
        written = adapt(name, index_dir / f"{split}.parquet", artifacts, metrics, params)
        log["artifacts"] = {"adapter": str(written)}

    run_stage(f"adapt_{name}", body, params_file)


if __name__ == "__main__":
    app()
