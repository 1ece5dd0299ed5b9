"""demo_data stage: generate the synthetic demo dataset (VOC layout) that the default pipeline runs on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import run_stage

app = typer.Typer(add_completion=False)


@app.command()
def main(params_file: Path = typer.Option(Path("params.yaml"), "--params")) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.data.synthetic import generate_synthetic
        from wsss_core.store.atomic import atomic_directory

        dataset = params["dataset"]
        settings = dataset["synthetic"]
        with atomic_directory(dataset["root"]) as tmp:
            generate_synthetic(
                tmp,
                n_train=settings["n_train"],
                n_val=settings["n_val"],
                image_size=tuple(settings["image_size"]),
                seed=settings["seed"],
                min_objects=settings["min_objects"],
                max_objects=settings["max_objects"],
            )
        log["images"] = settings["n_train"] + settings["n_val"]

    run_stage("demo_data", body, params_file)


if __name__ == "__main__":
    app()
