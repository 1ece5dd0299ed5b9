"""The `wsss` command: inspection and checks around the pipeline (the stages themselves run from dvc.yaml).

Heavy libraries are imported inside the commands so `wsss --help` stays instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="wsss: inspect and check the artifacts of the WSSS pipeline (stages run through `dvc repro`).",
)
params_app = typer.Typer(no_args_is_help=True, help="Validate and show params files.")
dataset_app = typer.Typer(no_args_is_help=True, help="Check datasets.")
app.add_typer(params_app, name="params")
app.add_typer(dataset_app, name="dataset")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code=1)


@app.command("audit")
def audit_command(
    path: Path = typer.Argument(..., help="an artifact: .zarr group, .parquet table, or a report directory"),
    deep: bool = typer.Option(False, "--deep", help="also re-hash every image and mask listed in dataset indexes"),
) -> None:
    """Print an artifact's provenance chain back to the dataset; exit 1 if any recorded hash no longer matches."""
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
        print("audit: some upstream content no longer matches its recorded hash", file=sys.stderr)
        raise typer.Exit(code=1)


@params_app.command("check")
def params_check(path: Path = typer.Argument(Path("params.yaml"))) -> None:
    """Validate a params file and print it with defaults filled in."""
    from wsss_core.params import ParamsError, load_params

    try:
        params = load_params(path)
    except ParamsError as error:
        _fail(str(error))
    print(json.dumps(params, indent=1, sort_keys=True))


@params_app.command("preset")
def params_preset(
    preset: Path = typer.Argument(..., help="a preset file, e.g. presets/clip_es_voc.yaml"),
    output: Path = typer.Option(Path("params.yaml"), help="the params file to write"),
) -> None:
    """Write a complete params file: every key's default, overridden by the preset (a method's reference setup)."""
    import yaml

    from wsss_core.params import ParamsError, apply_preset
    from wsss_core.store.atomic import atomic_file

    try:
        params = apply_preset(preset)
    except ParamsError as error:
        _fail(str(error))
    header = f"# Written by `wsss params preset {preset.as_posix()}`: defaults overridden by that preset.\n"
    with atomic_file(output, "w") as handle:
        handle.write(header + yaml.safe_dump(params, sort_keys=False, default_flow_style=False))
    print(f"wrote {output} from {preset}")


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


if __name__ == "__main__":
    app()
