"""Engines: where a per-image stage's model runs over the images it still has to compute.

A per-image stage (sam_masks, cams, net_cams, predict) describes its model as an `ImageJob`: plain data (params,
paths) whose `build(device)` loads the model and returns an `ImageWorker`, a callable from one image's input to its
result. The stage's own process reads every input (`load`, with the checks on the data) and hands every result to
its resumable writer (`write`); the engine only decides where the workers run:

  local  one worker in the stage's process (the default; needs no Ray)
  ray    one worker per GPU of a Ray cluster, or per `cpus_per_worker` CPUs without GPUs (engine/ray_engine.py)

Inputs are read and results written in one process, by the writer that keeps each finished image, so both engines
write the same artifact, byte for byte, and a stage killed under either resumes from the images already written.
The engine is not recorded in the artifact and no stage depends on its params: switching it reruns nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol


class ImageWorker(Protocol):
    details: dict[str, Any]  # what the loaded model is (JSON-able, for provenance): the same on every worker

    def __call__(self, item: Any) -> Any: ...


class ImageJob(Protocol):
    def build(self, device: str) -> ImageWorker: ...


class ImageError(RuntimeError):
    """An image whose computation failed for a reason other than bad input; the message names the image."""


class Engine(Protocol):
    details: dict[str, Any]

    def run(
        self,
        indices: Sequence[int],
        load: Callable[[int], Any],
        write: Callable[[int, Any], None],
        image_ids: Sequence[str],
    ) -> None: ...

    def close(self) -> None: ...


def _local(settings: dict[str, Any], job: ImageJob, device: str, label: str) -> Engine:
    from wsss_core.engine.local import LocalEngine

    return LocalEngine(job, device, label)


def _ray(settings: dict[str, Any], job: ImageJob, device: str, label: str) -> Engine:
    from wsss_core.engine.ray_engine import RayEngine

    return RayEngine(settings["ray"], job, device, label)


ENGINES: dict[str, Callable[[dict[str, Any], ImageJob, str, str], Engine]] = {"local": _local, "ray": _ray}


@contextmanager
def open_engine(settings: dict[str, Any], job: ImageJob, device: str, label: str) -> Iterator[Engine]:
    """The engine `settings` (the params' `engine` section) chooses, with `job`'s workers built on `device` (the
    stage's device param: auto, cpu, cuda...); released on exit."""
    engine = ENGINES[settings["kind"]](settings, job, device, label)
    try:
        yield engine
    finally:
        engine.close()


def image_failure(error: BaseException, what: str, cause: BaseException | None = None) -> BaseException:
    """What to raise for `error` (a worker's, carrying the original exception as `cause`): bad input (params, data,
    artifacts, checkpoints) as it was raised, since its message names the file or key; anything else as an ImageError
    saying `what` (which image, say)."""
    from wsss_core.stage import expected_errors

    original = error if cause is None else cause
    if isinstance(original, expected_errors()):
        return original
    message = f"{what}: {type(original).__name__}: {original}"
    return ImageError(message if cause is None else f"{message}\nin the worker: {error}")
