"""demo_data stage: generate the synthetic demo dataset (VOC layout) that the default pipeline runs on.

It writes its declared output (`--out`, data/demo) and nothing else, whatever `dataset.root` says: with a real
dataset configured, the user's tree is never written. The generator also refuses any existing folder it did not
create itself (see `generate_synthetic`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import run_stage

app = typer.Typer(add_completion=False)


@app.command()
def main(
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    out: Path = typer.Option(Path("data/demo"), help="where to generate the dataset (the stage's declared output)"),
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.data.synthetic import generate_synthetic

        dataset, settings = params["dataset"], params["demo"]["data"]
        if dataset["kind"] == "synthetic" and Path(dataset["root"]).resolve() != out.resolve():
            print(f"demo_data: note: generating {out}, but dataset.root is {dataset['root']}", file=sys.stderr)
        generate_synthetic(
            out,
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
