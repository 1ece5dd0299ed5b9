"""Pinning the CPU's code paths reaches torch's libraries, and is refused once torch has loaded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from wsss_core.pinned_cpu import pin_cpu

SHOW = """
import json, os
from wsss_core.pinned_cpu import pin_cpu
pin_cpu()
import torch
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                  "mkl": os.environ["MKL_CBWR"]}))
"""


def test_torch_runs_the_pinned_kernels_and_threads_whatever_the_host_asks_for():
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "7", "ATEN_CPU_CAPABILITY": "default"}  # the host's own
    result = subprocess.run([sys.executable, "-c", SHOW], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == {"capability": "AVX2", "threads": 2, "mkl": "AVX2,STRICT"}


def test_pinning_after_torch_loaded_is_refused():
    import torch  # noqa: F401 - loaded, as in every test process

    with pytest.raises(RuntimeError, match="before torch is imported"):
        pin_cpu()


STAGE = """
import json, os, sys
from pathlib import Path
from wsss_core.stage import run_stage
seen = {}
run_stage("probe", lambda params, log: seen.update(mkl=os.environ.get("MKL_CBWR"), torch="torch" in sys.modules),
          Path(sys.argv[1]), pinned_cpu_from="demo.clip")
print(json.dumps(seen))
"""


@pytest.mark.parametrize("pinned", [True, False])
def test_a_stage_is_pinned_before_its_body_when_its_params_ask(tmp_path, pinned):
    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"demo": {"clip": {"pinned_cpu": pinned}}}))
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", STAGE, "params.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout.splitlines()[-1]) == {"mkl": "AVX2,STRICT" if pinned else None, "torch": False}
