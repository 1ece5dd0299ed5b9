"""What every stage script shares: load its params, turn expected failures into a clear message and exit 1."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from wsss_core.params import ParamsError, load_params
from wsss_core.runlog import run_log


def expected_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's input (params, data, artifacts, checkpoints), not by a bug in the code."""
    from wsss_core.data.base import DatasetError
    from wsss_core.models.checkpoints import CheckpointError
    from wsss_core.store.table import ArtifactError

    return (ParamsError, DatasetError, ArtifactError, CheckpointError)


def run_stage(name: str, body: Callable[[dict[str, Any], dict[str, Any]], None], params_file: Path) -> None:
    """Validate the params file, run `body(params, log)` under a run log, and exit 1 with a message on bad input."""
    try:
        with run_log(name) as log:
            body(load_params(params_file), log)
    except expected_errors() as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        raise typer.Exit(code=1) from None
