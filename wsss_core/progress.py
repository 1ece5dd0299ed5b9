"""Progress bars for long loops: shown on a terminal, silent in logs and CI."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "img") -> Iterator[T]:
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, total=total, unit=unit, disable=not sys.stderr.isatty(), dynamic_ncols=True)
