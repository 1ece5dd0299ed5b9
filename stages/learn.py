"""learn stage: FMA-WSSS prompt learning for one task on a frozen CLIP -> artifacts/prompts_<task>/.

classification: unified-context prompts, multi-label contrastive loss on the image-level labels.
segmentation: class-specific prompts, CAM activation loss against the coarse seeds (learn.segmentation.seeds).
Loss and learning-rate curves go to metrics/learn_<task>/ for `dvc plots`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import run_stage

app = typer.Typer(add_completion=False)


@app.command()
def main(
    task: str = typer.Argument(..., help="classification or segmentation"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    index_dir: Path = typer.Option(Path("artifacts/index")),
    artifacts: Path = typer.Option(Path("artifacts")),
    metrics: Path = typer.Option(Path("metrics")),
    device: str = typer.Option(None, help="overrides learn.device (auto: CUDA when present)"),
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.params import ParamsError
        from wsss_core.prompts.train import TASK_OUTPUTS, learn_prompts

        if task not in TASK_OUTPUTS:
            raise ParamsError(f"learn: task {task!r} is not one of: {', '.join(TASK_OUTPUTS)}")
        if device is not None:
            params["learn"]["device"] = device
        split = params["dataset"]["train_split"]
        written = learn_prompts(task, index_dir / f"{split}.parquet", artifacts, metrics, params)
        log["artifacts"] = {"prompts": str(written)}

    run_stage(f"learn_{task}", body, params_file)


if __name__ == "__main__":
    app()
