"""The adapt stage's work: train one adapter-learning run (`adapt.runs.<name>`, a method of wsss_core.adapter) on the
training split and write `artifacts/adapter_<name>/` (wsss_core/adapter/artifact.py) and its curves,
`metrics/adapt_<name>/loss.csv` (iteration and the method's LOSS_COLUMNS) and `lr.csv` (iteration, lr).

Training resumes from `.wsss_scratch/adapter_<name>-<key>/` after a kill; the key hashes everything the result
depends on (the run's params, models.clip, the sha256 of the index and of the artifact it reads) and the code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from wsss_core.store.scratch import DEFAULT_SCRATCH


def write_curves(directory: Path, curve: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    """loss.csv (iteration and `columns`) and lr.csv for `dvc plots`, written atomically."""
    from wsss_core.store.atomic import atomic_file

    directory.mkdir(parents=True, exist_ok=True)
    tables = {
        "loss": ["iteration," + ",".join(columns)]
        + [f"{row['iteration']}," + ",".join(f"{row[name]:.8g}" for name in columns) for row in curve],
        "lr": ["iteration,lr"] + [f"{row['iteration']},{row['lr']:.8g}" for row in curve],
    }
    for name, lines in tables.items():
        with atomic_file(directory / f"{name}.csv", "w") as handle:
            handle.write("\n".join(lines) + "\n")


def adapt(
    name: str,
    index_path: Path,
    artifacts_dir: Path,
    metrics_dir: Path,
    params: dict[str, Any],
    *,
    scratch_root: Path = DEFAULT_SCRATCH,
    on_step: Callable[[int], None] | None = None,
) -> Path:
    """Train `adapt.runs.<name>` on the index's images; write `artifacts_dir/adapter_<name>` and the curves."""
    from wsss_core.adapter import ADAPT_METHODS
    from wsss_core.adapter.artifact import STAGE, write_adapter
    from wsss_core.data.index import read_index
    from wsss_core.hashing import sha256_path
    from wsss_core.models import IMAGENET_MEAN, IMAGENET_STD, resolve_device
    from wsss_core.models.loading import clip_from_params
    from wsss_core.provenance import canonical, make_provenance
    from wsss_core.store.scratch import resumable_work
    from wsss_core.store.table import ArtifactError

    section, clip_params = params["adapt"], params["models"]["clip"]
    run, key = section["runs"][name], f"adapt.runs.{name}"
    method = ADAPT_METHODS[run["method"]]
    reads = Path(run["reads"])
    if not reads.exists():
        raise ArtifactError(f"{key}.reads: {reads} not found (has its stage run?)")
    dataset = read_index(index_path)
    device = resolve_device(section["device"])
    clip = clip_from_params(clip_params, device)

    read = {key: run, "models.clip": clip_params}
    upstream = {"index": index_path} if method.READS is None else {"index": index_path, method.READS: reads}
    out = artifacts_dir / f"adapter_{name}"
    inputs = {"read": read, "upstream": {label: sha256_path(path) for label, path in upstream.items()}}
    with resumable_work(out, canonical(inputs), scratch_root) as work_dir:
        fitted = method.fit(
            clip,
            run,
            dataset,
            reads,
            key=key,
            device=device,
            work_dir=work_dir,
            checkpoint_every=section["checkpoint_every"],
            on_step=on_step,
        )
        last = fitted.curve[-1]
        provenance = make_provenance(
            STAGE,
            read,
            upstream=upstream,
            checkpoints={"clip": clip.provenance, **fitted.checkpoints},
            libraries=("open_clip_torch", "safetensors"),
            details={
                "run": name,
                "method": run["method"],
                "network": "weclip_head",  # the head, as the predict stage rebuilds it
                "class_names": list(dataset.class_names),
                "split": dataset.split,
                "mean": list(IMAGENET_MEAN),
                "std": list(IMAGENET_STD),
                "iterations_run": len(fitted.curve),
                "final_loss": {column: last[column] for column in method.LOSS_COLUMNS},
                **fitted.details,
            },
        )
        write_adapter(out, fitted.model, provenance)
        write_curves(metrics_dir / f"adapt_{name}", fitted.curve, method.LOSS_COLUMNS)
    return out
