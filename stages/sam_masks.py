"""sam_masks stage: class-agnostic masks (SAM, or Felzenszwalb without weights) -> artifacts/sam_masks/<split>/.

One GPU:      python stages/sam_masks.py
Several GPUs: python stages/sam_masks.py --shard 0/2 --device cuda:0 &
              python stages/sam_masks.py --shard 1/2 --device cuda:1 &
              wait; python stages/sam_masks.py --merge      (or dvc repro, which merges the finished work)
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
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    index_dir: Path = typer.Option(Path("artifacts/index")),
    out_dir: Path = typer.Option(Path("artifacts/sam_masks")),
    reports_dir: Path = typer.Option(Path("reports/sam_masks"), help="overlay pictures"),
    device: str = typer.Option(None, help="overrides sam_masks.device, e.g. cuda:1 for a shard's GPU"),
    shard: str = typer.Option(None, help="I/N: compute only shard I of N into the scratch directory, then stop"),
    merge: bool = typer.Option(
        False, "--merge", help="compute nothing; assemble the shards' work (fails if unfinished)"
    ),
    scratch: Path = typer.Option(DEFAULT_SCRATCH, help="work directory; the shards of one run must share it"),
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.data.index import read_index
        from wsss_core.masks.generate import generate_masks, mask_splits
        from wsss_core.masks.overlay import write_overlays
        from wsss_core.masks.records import MaskSet
        from wsss_core.masks.writer import parse_shard
        from wsss_core.params import ParamsError
        from wsss_core.store.atomic import atomic_directory

        if device is not None:
            params["sam_masks"]["device"] = device
        if shard is not None and merge:
            raise ParamsError("--shard and --merge: a shard computes, the merge only assembles; give one")
        try:
            shard_pair = parse_shard(shard) if shard is not None else None
        except ValueError as error:
            raise ParamsError(f"--shard: {error}") from None
        written = generate_masks(index_dir, out_dir, params, shard=shard_pair, merge_only=merge, scratch_root=scratch)
        if written is None:
            print(f"sam_masks: shard {shard} finished; merge with `python stages/sam_masks.py --merge` once all are")
            return
        splits = mask_splits(params)
        log["masks"] = {split: int(MaskSet(out_dir / split).n_masks.sum()) for split in splits}
        with atomic_directory(reports_dir) as pictures:
            for split in splits:
                paths = {s.image_id: s.image_path for s in read_index(index_dir / f"{split}.parquet").samples}
                write_overlays(out_dir / split, paths, pictures, params["sam_masks"]["overlays"])

    run_stage("sam_masks" if shard is None else f"sam_masks_shard_{shard.replace('/', 'of')}", body, params_file)


if __name__ == "__main__":
    app()
