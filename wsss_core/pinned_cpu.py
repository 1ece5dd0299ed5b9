"""Pin the CPU's floating-point code paths, so that a CPU run's bits do not depend on the host's ISA or core count.

A CPU run's float results depend on which kernels the libraries pick for the host: ATen's vectorised kernels
(AVX-512 or AVX2), MKL's GEMM code path, oneDNN's JIT ISA, and the number of threads a reduction is split over.
Each one changes the last bits of a training step (benchmarks/cpu_reproducibility.py measures them one by one), and
the demo's 3,000 pretraining steps, or its 300 retraining steps, amplify that into points of mIoU between two
machines. Pinned, the host's ISA and core count no longer choose the code paths (the benchmark's pinned rows keep
one hash whatever else of the host they vary). GPU work is untouched.

Not across vendors. MKL's AVX2 branch is reproducible across Intel CPUs only; on any other CPU MKL ignores it and
takes its AUTO branch (MKL's documentation: only AUTO and COMPATIBLE exist on non-Intel processors). Measured, an
Intel Xeon and an AMD EPYC, both pinned, pretrain losses that first differ at step 14 (in the 6th decimal), and the
demo's figures end up as far apart as two pretraining seeds (reports/demo_spread.md, across machines). COMPATIBLE,
MKL's one branch that is the same on every vendor's CPU (SSE2), adds about 50 ms to each pretraining step of about
75 (the benchmark's "pinned + MKL COMPATIBLE" row: 60 steps in 10.8 against 8.0 s, process start included), some
2.5 minutes over the demo's 3,000 steps, so the demo stays on AVX2 and reports its spread across machines instead.

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
