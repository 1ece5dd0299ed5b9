"""sam_masks stage: one mask run (`sam_masks.runs.<name>`: SAM, or Felzenszwalb without weights), class-agnostic
masks -> artifacts/masks_<name>/<split>/.

One GPU:      python stages/sam_masks.py NAME
Several GPUs: python stages/sam_masks.py NAME --shard 0/2 --device cuda:0 &
              python stages/sam_masks.py NAME --shard 1/2 --device cuda:1 &
              wait; python stages/sam_masks.py NAME --merge      (or dvc repro, which merges the finished work)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import run_stage
from wsss_core.store.scratch import DEFAULT_SCRATCH

app = typer.Typer(add_completion=False)


@app.command()
def main(
    name: str = typer.Argument(..., help="a key of sam_masks.runs"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    index_dir: Path = typer.Option(Path("artifacts/index")),
    out: Path = typer.Option(None, help="default: artifacts/masks_<name>"),
    reports: Path = typer.Option(None, help="overlay pictures; default: reports/masks_<name>"),
    device: str = typer.Option(None, help="overrides sam_masks.device, e.g. cuda:1 for a shard's GPU"),
    shard: str = typer.Option(None, help="I/N: compute only shard I of N into the scratch directory, then stop"),
    merge: bool = typer.Option(
        False, "--merge", help="compute nothing; assemble the shards' work (fails if unfinished)"
    ),
    scratch: Path = typer.Option(DEFAULT_SCRATCH, help="work directory; the shards of one run must share it"),
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.data.index import read_index
        from wsss_core.drivers.masks import generate_masks, mask_splits
        from wsss_core.masks.overlay import write_overlays
        from wsss_core.masks.records import MaskSet
        from wsss_core.masks.writer import parse_shard
        from wsss_core.params import ParamsError, require_entry
        from wsss_core.store.atomic import atomic_directory

        settings = require_entry(params, "sam_masks.runs", name)
        out_dir, reports_dir = out or Path(f"artifacts/masks_{name}"), reports or Path(f"reports/masks_{name}")
        if shard is not None and merge:
            raise ParamsError("--shard and --merge: a shard computes, the merge only assembles; give one")
        try:
            shard_pair = parse_shard(shard) if shard is not None else None
        except ValueError as error:
            raise ParamsError(f"--shard: {error}") from None
        written = generate_masks(
            index_dir,
            out_dir,
            params["dataset"],
            settings,
            device or params["sam_masks"]["device"],
            shard=shard_pair,
            merge_only=merge,
            scratch_root=scratch,
            key=f"sam_masks.runs.{name}",
        )
        if written is None:
            merge_command = f"python stages/sam_masks.py {name} --merge"
            print(f"sam_masks: shard {shard} finished; merge with `{merge_command}` once all are")
            return
        splits = mask_splits(params["dataset"], settings)
        log["masks"] = {split: int(MaskSet(out_dir / split).n_masks.sum()) for split in splits}
        with atomic_directory(reports_dir) as pictures:
            for split in splits:
                paths = {s.image_id: s.image_path for s in read_index(index_dir / f"{split}.parquet").samples}
                write_overlays(out_dir / split, paths, pictures, settings["overlays"])

    suffix = "" if shard is None else f"_shard_{shard.replace('/', 'of')}"
    run_stage(f"masks_{name}{suffix}", body, params_file)


if __name__ == "__main__":
    app()
