"""The `wsss` command: inspection and checks around the pipeline (the stages themselves run from dvc.yaml).

Heavy libraries are imported inside the commands so `wsss --help` stays instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from wsss_core.weights import weights_app

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="wsss: inspect and check the artifacts of the WSSS pipeline (stages run through `dvc repro`).",
)
params_app = typer.Typer(no_args_is_help=True, help="Validate and show params files.")
dataset_app = typer.Typer(no_args_is_help=True, help="Check datasets.")
app.add_typer(params_app, name="params")
app.add_typer(dataset_app, name="dataset")
app.add_typer(weights_app, name="weights", help="The checkpoints a params file or preset needs: list, verify, fetch.")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code=1)


@app.command("audit")
def audit_command(
    path: Path = typer.Argument(..., help="an artifact: .zarr group, .parquet table, or a report directory"),
    deep: bool = typer.Option(False, "--deep", help="also re-hash every image and mask listed in dataset indexes"),
) -> None:
    """Print an artifact's provenance chain back to the dataset; exit 1 if the artifact's own content no longer
    matches its seal, or any recorded hash of what it was made from no longer matches."""
    from wsss_core.audit import audit, format_audit
    from wsss_core.store.table import ArtifactError

    if not path.exists():
        _fail(f"{path}: not found")
    try:
        node = audit(path, deep=deep, name=path.name)
    except ArtifactError as error:
        _fail(str(error))
    print("\n".join(format_audit(node)))
    if not node.ok:
        print("audit: some content no longer matches its recorded hash or its own seal", file=sys.stderr)
        raise typer.Exit(code=1)


@params_app.command("check")
def params_check(
    path: Path = typer.Argument(Path("params.yaml"), help="a params file, or a preset"),
    show: bool = typer.Option(False, "--show", help="also print the params with defaults filled in"),
) -> None:
    """Validate a params file as a pipeline: every key, and every artifact a stage reads made by a stage of the same
    params (exit 1 naming the key). List the stages a root `dvc repro` runs; warn about inputs not on disk yet."""
    from wsss_core.params import ParamsError, load_params
    from wsss_core.params.pipeline import check_pipeline, pipeline_problems, pipeline_stages

    try:
        params = load_params(path)
        check_pipeline(params, files=False)
    except ParamsError as error:
        _fail(str(error))
    if show:
        print(json.dumps(params, indent=1, sort_keys=True))
    print(f"{path}: OK; dvc repro runs {', '.join(stage.name for stage in pipeline_stages(params))}")
    for problem in pipeline_problems(params, files=True):
        print(f"warning: {problem}", file=sys.stderr)


@params_app.command("preset")
def params_preset(
    preset: Path = typer.Argument(..., help="a preset file, e.g. presets/clip_es_voc.yaml"),
    output: Path = typer.Option(Path("params.yaml"), help="the params file to write"),
    force: bool = typer.Option(
        False, "--force", help="overwrite an existing, different params file (its content is kept in FILE.bak)"
    ),
) -> None:
    """Write a complete params file: every key's default, overridden by the preset (a method's reference setup).

    An existing params file that differs from what the preset gives is only replaced with --force; its content is
    then first copied to OUTPUT.bak (replacing any older .bak, so it always holds the file as it was just before the
    latest forced write). A file that already matches is left untouched.
    """
    import yaml

    from wsss_core.params import ParamsError, apply_preset
    from wsss_core.params.pipeline import check_pipeline
    from wsss_core.store.atomic import atomic_file

    try:
        params = apply_preset(preset)
        check_pipeline(params, files=False)
    except ParamsError as error:
        _fail(str(error))
    header = f"# Written by `wsss params preset {preset.as_posix()}`: defaults overridden by that preset.\n"
    content = (header + yaml.safe_dump(params, sort_keys=False, default_flow_style=False)).encode()
    backup = None
    if output.is_dir():
        _fail(f"{output}: is a directory, not a params file")
    if output.exists():
        current = output.read_bytes()
        if current == content:
            print(f"{output} already matches {preset}; nothing written")
            return
        if not force:
            _fail(
                f"{output} exists and differs from what {preset} gives; not overwritten. "
                f"Pass --force to overwrite it (its current content is then kept in {output}.bak)"
            )
        backup = output.with_name(output.name + ".bak")
        with atomic_file(backup, "wb") as handle:
            handle.write(current)
    with atomic_file(output, "wb") as handle:
        handle.write(content)
    print(f"wrote {output} from {preset}" + (f"; the previous content is in {backup}" if backup else ""))


@dataset_app.command("check")
def dataset_check(
    kind: str = typer.Option(..., help="voc, coco, folder or synthetic"),
    root: Path = typer.Option(..., help="dataset root"),
    split: str = typer.Option("train"),
    label_source: str = typer.Option("gt_masks"),
) -> None:
    """Read every image and mask of a split and report the first problem (exit 1) or a summary."""
    from wsss_core.data import build_dataset
    from wsss_core.data.base import DatasetError, validate_dataset

    options = {} if kind in ("coco", "folder") else {"label_source": label_source}
    try:
        dataset = build_dataset(kind, root, split, **options)
        validate_dataset(dataset)
    except DatasetError as error:
        _fail(str(error))
    print(f"{kind} {root} split {split}: {len(dataset)} images, {dataset.num_classes - 1} classes, OK")


@app.command("demo-spread")
def demo_spread(
    seeds: list[int] = typer.Option([0, 1, 2], "--seed", help="demo.clip.seed values, one full dvc repro each"),
    jobs: int = typer.Option(1, min=1, help="runs at a time"),
    out_dir: Path = typer.Option(Path("reports"), help="where demo_spread.md and demo_spread.json are written"),
    replace: bool = typer.Option(False, help="drop the runs already in demo_spread.json (after a change of bits)"),
) -> None:
    """Run the demo pipeline once per pretraining seed (each in a git worktree of HEAD, with this params.yaml), add
    the runs to demo_spread.json under this machine's CPU, and write how far every evaluated mIoU moves across seeds
    and machines: the noise a difference between two demo rows must exceed."""
    from wsss_core.demo.spread import measure_spread, spread_markdown

    try:
        runs = measure_spread(Path.cwd(), sorted(set(seeds)), out_dir, jobs, replace=replace)
    except ValueError as error:
        _fail(str(error))
    print(spread_markdown(runs))


if __name__ == "__main__":
    app()
