"""Which CPU settings change the demo CLIP's pretraining bits, and what pinning them costs.

Runs the demo_clip stage for a few steps (a small copy of params.yaml's demo.clip) once per setting, each in its own
process, and prints the sha256 of the weights it wrote and the wall time, against the native run measured in the
same invocation. A setting that changes the hash is one that differs between machines (the host's best ATen kernels,
MKL code path, oneDNN ISA, core count). With demo.clip.pinned_cpu (wsss_core/pinned_cpu.py) the hash must not move,
whatever else of the host is varied.

    .venv/bin/python benchmarks/cpu_reproducibility.py [--steps 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# Each: (label, extra environment, pinned?)
SETTINGS = [
    ("native", {}, False),
    ("ATen kernels AVX2", {"ATEN_CPU_CAPABILITY": "avx2"}, False),
    ("ATen kernels scalar", {"ATEN_CPU_CAPABILITY": "default"}, False),
    ("MKL code path AVX2", {"MKL_CBWR": "AVX2"}, False),
    ("oneDNN ISA AVX2", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
    ("one thread", {"OMP_NUM_THREADS": "1"}, False),
    ("three threads", {"OMP_NUM_THREADS": "3"}, False),
    ("pinned", {}, True),
    ("pinned + numpy without AVX-512", {"NPY_DISABLE_CPU_FEATURES": "AVX512F AVX512_SKX"}, True),
    ("pinned + OpenBLAS Haswell", {"OPENBLAS_CORETYPE": "Haswell"}, True),
    ("pinned + MKL instructions AVX2", {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, True),
    # MKL's only branch that is the same on CPUs of every vendor (its AVX2 branch is Intel's only): the price of bits
    # shared with AMD CPUs. pin_cpu() sets MKL_CBWR itself, so this row changes PINNED_CPU_ENV (PIN_OVERRIDES).
    ("pinned + MKL COMPATIBLE", {}, True),
]
PIN_OVERRIDES = {"pinned + MKL COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"}}

# The stage's own script, run with PINNED_CPU_ENV changed first (pin_cpu reads it when the stage calls it).
STAGE_WITH_OVERRIDE = """
import runpy, sys
from wsss_core import pinned_cpu
pinned_cpu.PINNED_CPU_ENV.update(dict(item.split("=", 1) for item in sys.argv[1].split(",")))
sys.argv = ["stages/demo_clip.py", *sys.argv[2:]]
runpy.run_path("stages/demo_clip.py", run_name="__main__")
"""


def run(params: Path, out: Path, extra: dict[str, str], pin_override: dict[str, str]) -> tuple[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, **extra}
    arguments = ["--params", str(params), "--out-dir", str(out)]
    arguments += ["--curve", str(out.with_suffix(".csv")), "--device", "cpu"]
    if pin_override:
        override = ",".join(f"{key}={value}" for key, value in pin_override.items())
        command = [sys.executable, "-c", STAGE_WITH_OVERRIDE, override, *arguments]
    else:
        command = [sys.executable, "stages/demo_clip.py", *arguments]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()[:12], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["demo"]["clip"].update(steps=args.steps, scenes=200, closeups=100, checkpoint_every=10**6)
        for pinned in (False, True):  # demo.clip.pinned_cpu: the stage pins before torch loads
            params["demo"]["clip"]["pinned_cpu"] = pinned
            (tmp / f"params_{pinned}.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        results = {}
        for label, extra, pinned in SETTINGS:
            override = PIN_OVERRIDES.get(label, {})
            runs = [run(tmp / f"params_{pinned}.yaml", tmp / f"out{i}", extra, override) for i in range(args.repeats)]
            hashes = {digest for digest, _ in runs}
            results[label] = (hashes, statistics.median(seconds for _, seconds in runs))
        native_hash, native_seconds = next(iter(results["native"][0])), results["native"][1]
        pinned_hash = next(iter(results["pinned"][0]))
        print(f"demo CLIP pretraining, {args.steps} steps, median of {args.repeats} runs each (process start included)")
        print(f"{'setting':34} {'weights sha256':14} {'= native':8} {'= pinned':8} {'seconds':>8} {'x native':>8}")
        for label, (hashes, seconds) in results.items():
            digest = next(iter(hashes)) if len(hashes) == 1 else "varies!"
            print(
                f"{label:34} {digest:14} {str(digest == native_hash):8} {str(digest == pinned_hash):8} "
                f"{seconds:8.2f} {seconds / native_seconds:8.2f}"
            )


if __name__ == "__main__":
    main()
