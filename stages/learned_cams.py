"""learned_cams stage: CAMs from learned prompts (FMA-WSSS) -> artifacts/cams_coarse.zarr or cams_fine.zarr.

coarse: the classification prompts (artifacts/prompts_classification), CAA settings learn.coarse_cams;
fine: the segmentation prompts (artifacts/prompts_segmentation), CAA settings learn.fine_cams.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import run_stage

app = typer.Typer(add_completion=False)
PROMPTS_OF = {"coarse": "classification", "fine": "segmentation"}


@app.command()
def main(
    which: str = typer.Argument(..., help="coarse (classification prompts) or fine (segmentation prompts)"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    index_dir: Path = typer.Option(Path("artifacts/index")),
    artifacts: Path = typer.Option(Path("artifacts")),
    device: str = typer.Option(None, help="overrides learn.device (auto: CUDA when present)"),
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.cam.learned import generate_learned_cams
        from wsss_core.params import ParamsError

        if which not in PROMPTS_OF:
            raise ParamsError(f"learned_cams: {which!r} is not one of: {', '.join(PROMPTS_OF)}")
        if device is not None:
            params["learn"]["device"] = device
        split = params["dataset"]["train_split"]
        task = PROMPTS_OF[which]
        written = generate_learned_cams(
            index_dir / f"{split}.parquet",
            artifacts / f"prompts_{task}",
            artifacts / f"cams_{which}.zarr",
            f"{which}_cams",
            params,
        )
        log["artifacts"] = {"cams": str(written)}

    run_stage(f"cams_{which}", body, params_file)


if __name__ == "__main__":
    app()
