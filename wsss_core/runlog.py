"""Run logs: times, host and outcome of each stage run, kept OUT of artifacts so artifacts stay reproducible.

Logs go to `logs/<stage>.json` (git-ignored, not a DVC output); they are for people, not for caching.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LOG_DIR = Path("logs")


@contextmanager
def run_log(stage: str, **details: Any) -> Iterator[dict[str, Any]]:
    """Time the block and write its log; the yielded dict collects figures the stage wants to report."""
    record: dict[str, Any] = {"stage": stage, "host": platform.node(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    record.update(details)
    start = time.perf_counter()
    try:
        yield record
        record["status"] = "ok"
    except BaseException as error:
        record["status"] = f"failed: {type(error).__name__}: {error}"
        raise
    finally:
        record["seconds"] = round(time.perf_counter() - start, 3)
        try:
            LOG_DIR.mkdir(exist_ok=True)
            (LOG_DIR / f"{stage}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
        except OSError:
            pass  # a read-only checkout must not fail the stage over its log
