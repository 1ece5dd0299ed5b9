"""prepare stage: validate the dataset and write one index table per split (ids, paths, sizes, labels, hashes).

Every later stage reads images through these indexes, so their hashes (which cover every image's and mask's
sha256) are what ties an artifact to the exact data it was computed from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import run_stage

app = typer.Typer(add_completion=False)

INDEX_DIR = Path("artifacts/index")


@app.command()
def main(
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    out_dir: Path = typer.Option(INDEX_DIR, help="where {split}.parquet are written"),
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.data import build_dataset
        from wsss_core.data.base import validate_dataset
        from wsss_core.data.index import index_table
        from wsss_core.provenance import make_provenance, portable_path
        from wsss_core.store.table import write_table

        dataset = params["dataset"]
        read = {key: dataset[key] for key in ("kind", "root", "train_split", "eval_split", "label_source")}
        for split in dict.fromkeys((dataset["train_split"], dataset["eval_split"])):
            options = {} if dataset["kind"] in ("coco", "folder") else {"label_source": dataset["label_source"]}
            data = build_dataset(dataset["kind"], dataset["root"], split, **options)
            validate_dataset(data)
            provenance = make_provenance(
                "prepare",
                {"dataset": read},
                details={
                    "kind": data.name,
                    "root": portable_path(data.root),
                    "split": split,
                    "class_names": list(data.class_names),
                    "label_source": data.label_source,
                    "n_images": len(data),
                },
            )
            write_table(out_dir / f"{split}.parquet", index_table(data), provenance)
            log[f"{split}_images"] = len(data)

    run_stage("prepare", body, params_file)


if __name__ == "__main__":
    app()
