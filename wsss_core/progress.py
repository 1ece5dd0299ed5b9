"""Progress bars for long loops: shown on a terminal, silent in logs and CI."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def progress_bar(desc: str, total: int | None = None, unit: str = "img") -> Any:
    """A tqdm bar updated by hand (images done, rate, ETA); the caller closes it."""
    from tqdm import tqdm

    return tqdm(desc=desc, total=total, unit=unit, disable=not sys.stderr.isatty(), dynamic_ncols=True)


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "img") -> Iterator[T]:
    bar = progress_bar(desc, total, unit)
    try:
        for item in items:
            yield item
            bar.update()
    finally:
        bar.close()
