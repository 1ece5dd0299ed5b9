"""What every stage script shares: load its params, turn expected failures into a clear message and exit 1."""

from __future__ import annotations

import errno
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from wsss_core.params import ParamsError, load_params
from wsss_core.params.pipeline import check_pipeline
from wsss_core.runlog import run_log

# A full disk or an exhausted quota: the user's environment, not a bug, so a message rather than a traceback.
_DISK_FULL = {errno.ENOSPC: "no space left on device"}
if hasattr(errno, "EDQUOT"):  # not on Windows
    _DISK_FULL[errno.EDQUOT] = "disk quota exceeded"


# The per-image stages' engine options (wsss_core/engine), one definition for all of them.
ENGINE_OPTION = typer.Option(None, "--engine", help="overrides engine.kind: local | ray")
ADDRESS_OPTION = typer.Option(None, "--address", help="overrides engine.ray.address: local | auto | HOST:PORT")


def apply_engine_options(params: dict[str, Any], engine: str | None, address: str | None) -> None:
    """Write the --engine and --address options over the params' engine section."""
    from wsss_core.params.schema import ENGINE

    if engine is not None:
        if engine not in ENGINE["kind"].choices:
            raise ParamsError(f"--engine: {engine!r} is not an engine; choose from {', '.join(ENGINE['kind'].choices)}")
        params["engine"]["kind"] = engine
    if address is not None:
        params["engine"]["ray"]["address"] = address


def expected_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's input (params, data, artifacts, checkpoints), not by a bug in the code."""
    from wsss_core.data.base import DatasetError
    from wsss_core.models.checkpoints import CheckpointError
    from wsss_core.store.table import ArtifactError

    return (ParamsError, DatasetError, ArtifactError, CheckpointError)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def disk_full_message(error: OSError) -> str:
    """'<reason> while writing PATH (FREE free on that filesystem)' for an ENOSPC/EDQUOT error.

    PATH is the file the error names; without one (some libraries drop it), the stage's working directory, where
    stages write their artifacts. Free space is looked up on the nearest existing directory of that path (the file
    itself is often gone: atomic writes delete their temporary file), and reported as unknown if that fails too.
    """
    filename = error.filename
    if filename is not None:
        path = Path(filename.decode(errors="replace") if isinstance(filename, bytes) else str(filename))
        where = str(path)
    else:
        path = Path.cwd()
        where = f"a file under {path} (the error names no file)"
    try:
        probe = path.absolute()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = f"{_size(shutil.disk_usage(probe).free)} free on that filesystem"
    except (OSError, ValueError):
        free = "free space unknown"
    return f"{_DISK_FULL[error.errno]} while writing {where} ({free})"


def run_stage(
    name: str,
    body: Callable[[dict[str, Any], dict[str, Any]], None],
    params_file: Path,
    *,
    pinned_cpu_from: str | None = None,
) -> None:
    """Validate the params file (each section, and that every artifact a stage reads is made by a stage of the same
    params), run `body(params, log)` under a run log, and exit 1 with a message on bad input.

    `pinned_cpu_from`: the params section (dotted, e.g. "demo.clip") whose `pinned_cpu` decides whether the CPU's
    float code paths are pinned (wsss_core/pinned_cpu.py), before the body loads torch.

    A full disk or exceeded quota (ENOSPC, EDQUOT) also exits 1, naming the path and the space left; any other
    OSError propagates with its traceback.
    """
    try:
        with run_log(name) as log:
            params = load_params(params_file)
            check_pipeline(params, files=False)
            if pinned_cpu_from is not None:
                section = params
                for part in pinned_cpu_from.split("."):
                    section = section[part]
                if section["pinned_cpu"]:
                    from wsss_core.pinned_cpu import pin_cpu

                    pin_cpu()
            body(params, log)
    except expected_errors() as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        raise typer.Exit(code=1) from None
    except OSError as error:
        if error.errno not in _DISK_FULL:
            raise
        print(f"{name}: error: {disk_full_message(error)}", file=sys.stderr)
        raise typer.Exit(code=1) from None
