"""The local engine: the stage's own process computes every image, one after the other."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from wsss_core.engine import ImageJob, image_failure
from wsss_core.progress import progress


class LocalEngine:
    def __init__(self, job: ImageJob, device: str, label: str) -> None:
        self.label = label
        self.worker = job.build(device)
        self.details = self.worker.details

    def run(
        self,
        indices: Sequence[int],
        load: Callable[[int], Any],
        write: Callable[[int, Any], None],
        image_ids: Sequence[str],
    ) -> None:
        for index in progress(indices, self.label, total=len(indices)):
            item = load(index)
            try:
                result = self.worker(item)
            except Exception as error:
                failure = image_failure(error, f"{self.label}: image {image_ids[index]!r} failed")
                if failure is error:
                    raise
                raise failure from error
            write(index, result)

    def close(self) -> None:
        pass
