"""The Ray engine: the images of a per-image stage computed by model-holding workers on a Ray cluster.

One worker (a Ray actor) per GPU of the cluster, or per `cpus_per_worker` CPUs where it has none or the stage's
device is cpu; each builds the stage's model once. The stage's process reads the images in dataset order and sends
each to the least busy worker (`in_flight` queued per worker), then writes the results as they come back, through
the same writer as the local engine.

Faults: a worker that dies (killed, out of memory, a lost machine) is restarted by Ray, rebuilding its model, and
the images it held are sent again, up to `max_restarts` times; then the stage fails naming the image. An image that
raises fails the stage with its id. A killed stage keeps every image it wrote (the writers keep finished images), so
its rerun computes only the rest. Every worker must run the stage's code and load the same model: a machine with
another checkout or another checkpoint is refused by name rather than mixed into the artifact.

Machines of a cluster need the project at the same path (its code, params and checkpoints: a clone plus `dvc pull`,
or a shared filesystem) and the same Python environment; images travel from the stage's process to the workers.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from wsss_core.engine import ImageError, ImageJob, image_failure
from wsss_core.params import ParamsError
from wsss_core.pinned_cpu import PINNED_CPU_ENV
from wsss_core.progress import progress_bar


class _Worker:
    """The Ray actor: builds the job's model once, then computes one image per call."""

    def __init__(self, job: ImageJob, device: str, project_dir: str) -> None:
        os.chdir(project_dir)  # params name checkpoints and data relative to the project
        # A model that cannot be built (a missing checkpoint) is reported by describe(), as a task error that carries
        # the original exception: a failing actor constructor would only be restarted, then reported without it.
        self.worker, self.failure = None, None
        try:
            self.worker = job.build(device)
        except Exception as error:
            self.failure = error

    def describe(self) -> tuple[str, str, dict[str, Any]]:
        import ray

        from wsss_core.store.scratch import code_fingerprint

        if self.failure is not None:
            raise self.failure
        return ray.util.get_node_ip_address(), code_fingerprint(with_script=False), self.worker.details

    def compute(self, item: Any) -> Any:
        return self.worker(item)


def _connect(options: dict[str, Any]) -> bool:
    """Connect to (or start) the cluster `options` names; True when this engine must shut it down."""
    import ray

    if ray.is_initialized():  # a session the caller opened (a notebook, the tests): use it as it is
        return False
    address = options["address"]
    quiet = {"include_dashboard": False, "logging_level": "ERROR", "configure_logging": True}
    try:
        if address == "local":
            ray.init(address="local", num_cpus=options["local_cpus"], **quiet)
        else:
            ray.init(address=address, logging_level="ERROR", configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as error:
        hint = "start one with `ray start --head`, or use address local" if address == "auto" else "is it running?"
        raise ParamsError(f"engine.ray.address: no Ray cluster at {address!r} ({error}); {hint}") from None
    return True


class RayEngine:
    def __init__(self, options: dict[str, Any], job: ImageJob, device: str, label: str) -> None:
        try:
            import ray
        except ImportError:
            raise ParamsError("engine.kind: ray needs Ray installed: pip install 'wsss-core[ray]'") from None
        self.label, self.options = label, options
        self._owns_session = _connect(options)
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        if device.startswith("cuda") and not gpus:
            raise ParamsError(f"device {device!r}: the Ray cluster has no GPU ({cpus} CPUs); use auto or cpu")
        on_gpus = gpus > 0 and device != "cpu"
        self.capacity = gpus if on_gpus else max(1, cpus // options["cpus_per_worker"])
        if options["max_workers"] is not None:
            self.capacity = min(self.capacity, options["max_workers"])
        # Pinned float code paths (pinned_cpu.py) hold in the workers too, or their CPU bits would differ.
        pinned = {name: os.environ[name] for name in PINNED_CPU_ENV if name in os.environ}
        actor = ray.remote(_Worker).options(
            num_gpus=1 if on_gpus else 0,
            num_cpus=1 if on_gpus else options["cpus_per_worker"],
            max_restarts=options["max_restarts"],
            max_task_retries=options["max_restarts"],
            runtime_env={"env_vars": pinned} if pinned else None,
        )
        self.workers = [actor.remote(job, "cuda" if on_gpus else "cpu", os.getcwd()) for _ in range(self.capacity)]
        try:
            self.details = self._check_workers()
        except BaseException:
            self.close()  # open_engine never got the engine: release its workers (and session) here
            raise

    def _check_workers(self) -> dict[str, Any]:
        """Wait for the workers' models; check that each runs this code and loaded the model the first one loaded."""
        import ray
        from ray.exceptions import RayTaskError

        from wsss_core.store.scratch import code_fingerprint

        try:
            described = ray.get([worker.describe.remote() for worker in self.workers])
        except RayTaskError as error:
            raise image_failure(error, f"{self.label}: a worker could not load its model", error.cause) from None
        code = code_fingerprint(with_script=False)
        for node, fingerprint, details in described:
            if fingerprint != code:
                raise ImageError(
                    f"{self.label}: the worker on {node} runs other code than this stage (code fingerprint "
                    f"{fingerprint[:12]}, here {code[:12]}); check out the same commit on every machine"
                )
            if details != described[0][2]:
                raise ImageError(
                    f"{self.label}: the worker on {node} loaded another model ({details}) than the one on "
                    f"{described[0][0]} ({described[0][2]}); every machine needs the same checkpoints"
                )
        return described[0][2]

    def run(
        self,
        indices: Sequence[int],
        load: Callable[[int], Any],
        write: Callable[[int, Any], None],
        image_ids: Sequence[str],
    ) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        workers = self.workers
        queued = {id(worker): 0 for worker in workers}
        in_flight: dict[Any, tuple[int, Any]] = {}  # result ref -> (image index, its worker)
        upcoming = deque(indices)  # in dataset order, so that the writers' parts and shards complete in turn
        bar = progress_bar(f"{self.label} (ray, {len(workers)} workers)", total=len(indices))
        try:
            while upcoming or in_flight:
                while upcoming and len(in_flight) < len(workers) * self.options["in_flight"]:
                    index = upcoming.popleft()
                    worker = min(workers, key=lambda w: queued[id(w)])  # the least busy
                    in_flight[worker.compute.remote(load(index))] = (index, worker)
                    queued[id(worker)] += 1
                [ready], _ = ray.wait(list(in_flight), num_returns=1)
                index, worker = in_flight.pop(ready)
                queued[id(worker)] -= 1
                try:
                    result = ray.get(ready)
                except RayTaskError as error:
                    what = f"{self.label}: image {image_ids[index]!r} failed"
                    raise image_failure(error, what, error.cause) from None
                except RayActorError as error:
                    raise ImageError(
                        f"{self.label}: image {image_ids[index]!r}: its worker died "
                        f"{self.options['max_restarts'] + 1} times ({error})"
                    ) from None
                write(index, result)
                bar.update()
        finally:
            bar.close()

    def close(self) -> None:
        import ray

        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
        if self._owns_session:
            ray.shutdown()
