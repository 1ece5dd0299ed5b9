"""Pin the CPU's floating-point code paths, so that a CPU run's bits do not depend on the machine.

A CPU run's float results depend on which kernels the libraries pick for the host: ATen's vectorised kernels
(AVX-512 or AVX2), MKL's GEMM code path, oneDNN's JIT ISA, and the number of threads a reduction is split over.
Each one changes the last bits of a training step (benchmarks/cpu_reproducibility.py measures them one by one), and
the demo's 3,000 pretraining steps, or its 300 retraining steps, amplify that into points of mIoU between two
machines. Pinned, every x86-64 CPU with AVX2 (Intel since 2013, AMD since 2015) runs the same instructions in the
same order. GPU work is untouched.

`run_stage` calls `pin_cpu()` for the stages whose params ask for it (demo.clip, retrain and cam_nets: pinned_cpu),
before torch is imported: the libraries read these variables once, when they load.
"""

from __future__ import annotations

import os
import sys

PINNED_CPU_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",  # ATen's vectorised kernels: AVX2, not the host's best (often AVX-512)
    "MKL_CBWR": "AVX2,STRICT",  # MKL's conditional numerical reproducibility: the AVX2 code path, strictly
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN's JIT kernels (convolutions) at most AVX2
    # Two threads whatever the host has: how a reduction is split depends on the thread count (one thread costs the
    # demo's pretraining 2x on a 2-core machine; two cost nothing there, measured by the benchmark).
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
}


def pin_cpu() -> None:
    """Set PINNED_CPU_ENV for this process; torch must not be imported yet (its libraries would ignore it)."""
    if "torch" in sys.modules:
        raise RuntimeError("pin_cpu() must run before torch is imported: its libraries read the settings on load")
    os.environ.update(PINNED_CPU_ENV)
