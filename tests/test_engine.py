"""The engines (wsss_core/engine): Ray writes the local engine's bytes, survives a dead worker, names a bad image,
and a killed stage resumes from the images it wrote."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import yaml

from tests.conftest import ONE_RAY_AT_A_TIME, ROOT
from tests.test_stages import invoke, run_ok
from wsss_core.drivers import masks as mask_driver
from wsss_core.engine import ImageError
from wsss_core.hashing import sha256_path

MASK_RUN = "felzenszwalb"
pytestmark = ONE_RAY_AT_A_TIME


@pytest.fixture(scope="module")
def ray_session():
    """One small local Ray instance for the module; stages with engine ray use it as it is."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture
def prepared(project) -> Path:
    run_ok("demo_data")
    run_ok("prepare")
    return project


class FailingJob:
    """Wraps a stage's job: its worker fails on one image, by dying once (as a killed or OOM-killed worker would:
    `marker` records that it did) or by raising every time."""

    def __init__(self, job, image_id: str, how: str, marker: Path | None = None) -> None:
        self.job, self.image_id, self.how, self.marker = job, image_id, how, marker

    def build(self, device: str):
        return _FailingWorker(self.job.build(device), self)


class _FailingWorker:
    def __init__(self, worker, failing: FailingJob) -> None:
        self.worker, self.failing, self.details = worker, failing, worker.details

    def __call__(self, item):
        image_id = item[0]
        if image_id == self.failing.image_id:
            if self.failing.how == "raise":
                raise ValueError("this image breaks the model")
            if not self.failing.marker.exists():
                self.failing.marker.touch()
                os._exit(1)
        return self.worker(item)


@pytest.fixture(autouse=True)
def failing_jobs_travel_by_value():
    """Ray's workers cannot import this test module: send its classes by value."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_ray_writes_the_bytes_of_the_local_engine(prepared, ray_session):
    run_ok("sam_masks", MASK_RUN, "--out", "local/masks", "--reports", "local/reports")
    run_ok("cams", "caa", "--out", "local/cams.zarr")
    run_ok("sam_masks", MASK_RUN, "--engine", "ray", "--out", "ray/masks", "--reports", "ray/reports")
    run_ok("cams", "caa", "--engine", "ray", "--out", "ray/cams.zarr")
    assert sha256_path(prepared / "ray" / "masks") == sha256_path(prepared / "local" / "masks")
    assert sha256_path(prepared / "ray" / "cams.zarr") == sha256_path(prepared / "local" / "cams.zarr")


def test_a_dead_worker_is_replaced_and_its_image_redone(prepared, ray_session, monkeypatch, tmp_path):
    run_ok("sam_masks", MASK_RUN, "--out", "local/masks", "--reports", "local/reports")
    marker = tmp_path / "worker_died"
    real_job = mask_driver.MaskJob
    monkeypatch.setattr(
        mask_driver, "MaskJob", lambda settings: FailingJob(real_job(settings), "syn_000003", "die", marker)
    )
    run_ok("sam_masks", MASK_RUN, "--engine", "ray")
    assert marker.exists()  # the worker holding syn_000003 did die
    assert sha256_path(prepared / f"artifacts/masks_{MASK_RUN}") == sha256_path(prepared / "local" / "masks")


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_an_image_that_fails_stops_the_stage_naming_it(prepared, ray_session, monkeypatch, engine):
    real_job = mask_driver.MaskJob
    monkeypatch.setattr(mask_driver, "MaskJob", lambda settings: FailingJob(real_job(settings), "syn_000002", "raise"))
    message = "sam_masks: image 'syn_000002' failed: ValueError: this image breaks the model"
    with pytest.raises(ImageError, match=message):
        invoke("sam_masks", MASK_RUN, "--engine", engine)
    assert not (prepared / f"artifacts/masks_{MASK_RUN}").exists()


def test_a_worker_that_cannot_load_its_model_fails_the_stage_with_the_checkpoint_error(prepared, ray_session):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["models"]["clip"].update(random_init=False, checkpoint="missing/clip.safetensors")
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = invoke("cams", "caa", "--engine", "ray")
    assert result.exit_code == 1 and "checkpoint not found: missing/clip.safetensors" in result.output


# The cams stage in its own process, its job wrapped. `block`: on Ray, a worker stops for good at either of the last
# two images, so images 1-4 are written and 5 and 6 never come back; the test then kills the process group, as a
# crash of the machine would. `count`: on the local engine, each computed image is logged.
WRAPPED_STAGE = """
import hashlib, runpy, sys, threading
from pathlib import Path
from wsss_core.data.base import read_image
from wsss_core.data.index import read_index
from wsss_core.drivers import cams

stage, mode = sys.argv[1:]
samples = read_index(Path("artifacts/index/train.parquet")).samples
last_two = {hashlib.sha256(read_image(sample.image_path).tobytes()).hexdigest() for sample in samples[4:]}

class WrappedJob:
    def __init__(self, job):
        self.job = job
    def build(self, device):
        return WrappedWorker(self.job.build(device))

class WrappedWorker:
    def __init__(self, worker):
        self.worker, self.details = worker, worker.details
    def __call__(self, item):
        digest = hashlib.sha256(item[0].tobytes()).hexdigest()
        if mode == "count":
            with open("computed.log", "a") as log:
                log.write(digest + "\\n")
        elif digest in last_two:
            threading.Event().wait()
        return self.worker(item)

real = cams.ClipCamJob
cams.ClipCamJob = lambda *args: WrappedJob(real(*args))
sys.argv = [stage, "caa", "--engine", "ray" if mode == "block" else "local", "--address", "local"]
runpy.run_path(stage, run_name="__main__")
"""


def _wrapped_stage(project: Path, mode: str) -> subprocess.Popen:
    (project / "wrapped_stage.py").write_text(WRAPPED_STAGE)
    return subprocess.Popen(
        [sys.executable, "wrapped_stage.py", str(ROOT / "stages" / "cams.py"), mode],
        cwd=project,
        start_new_session=True,  # its own process group: Ray's processes die with it
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _written_images(project: Path) -> int:
    """Images of the cams_caa artifact finished in the scratch directory (one image per shard here)."""
    return sum(len(os.listdir(done)) for done in project.glob(".wsss_scratch/cams_caa.zarr-*/done"))


def test_a_stage_killed_under_ray_resumes_without_recomputing_written_images(prepared):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["engine"]["ray"].update(local_cpus=2, in_flight=2)
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_ok("cams", "caa", "--out", "reference/cams.zarr")
    driver = _wrapped_stage(prepared, "block")
    try:
        deadline = time.monotonic() + 90
        while _written_images(prepared) < 4:  # then 5 and 6 are held by blocked workers: nothing else can happen
            assert driver.poll() is None, driver.stderr.read().decode()
            assert time.monotonic() < deadline, "the stage under Ray did not reach its blocked state"
            threading.Event().wait(0.1)  # polling another process's progress
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert not (prepared / "artifacts" / "cams_caa.zarr").exists()  # no half artifact

    rerun = _wrapped_stage(prepared, "count")
    assert rerun.wait() == 0, rerun.stderr.read().decode()
    assert len((prepared / "computed.log").read_text().split()) == 2  # images 5 and 6 only
    assert sha256_path(prepared / "artifacts" / "cams_caa.zarr") == sha256_path(prepared / "reference" / "cams.zarr")
