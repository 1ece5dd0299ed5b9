"""learn stage: one FMA-WSSS prompt learning run (`learn.runs.<name>`) on a frozen CLIP -> artifacts/prompts_<name>/.

task classification: multi-label contrastive loss on the image-level labels.
task segmentation: CAM activation loss against the seeds the run reads (learn.runs.<name>.reads).
Loss and learning-rate curves go to metrics/learn_<name>/ for `dvc plots`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import run_stage

app = typer.Typer(add_completion=False)


@app.command()
def main(
    name: str = typer.Argument(..., help="a key of learn.runs"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    index_dir: Path = typer.Option(Path("artifacts/index")),
    artifacts: Path = typer.Option(Path("artifacts")),
    metrics: Path = typer.Option(Path("metrics")),
    device: str = typer.Option(None, help="overrides learn.device (auto: CUDA when present)"),
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.drivers.learn import learn_prompts
        from wsss_core.params import require_entry

        require_entry(params, "learn.runs", name)
        if device is not None:
            params["learn"]["device"] = device
        split = params["dataset"]["train_split"]
        written = learn_prompts(name, index_dir / f"{split}.parquet", artifacts, metrics, params)
        log["artifacts"] = {"prompts": str(written)}

    run_stage(f"learn_{name}", body, params_file)


if __name__ == "__main__":
    app()
