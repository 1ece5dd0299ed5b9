"""Run a stage with the CPU's floating-point code paths pinned, so that its bits do not depend on the machine.

A CPU run's float results depend on which kernels the libraries pick for the host: ATen's vectorised kernels
(AVX-512 or AVX2), MKL's GEMM code path, oneDNN's JIT ISA, and the number of threads a reduction is split over.
Each one changes the last bits of a training step (benchmarks/cpu_reproducibility.py measures them one by one), and
3,000 steps of the demo CLIP's pretraining amplify that into points of mIoU between two machines. Pinned, every
x86-64 CPU with AVX2 (Intel since 2013, AMD since 2015) runs the same instructions in the same order.

    python -m wsss_core.pinned_cpu stages/demo_clip.py --out-dir artifacts/demo_clip ...

The variables must be set before torch (and its OpenMP runtime) loads, hence a launcher rather than a function.
"""

from __future__ import annotations

import os
import runpy
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


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m wsss_core.pinned_cpu SCRIPT [ARGS...]")
    os.environ.update(PINNED_CPU_ENV)
    sys.argv = argv
    sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
