"""How long `dvc status` and a no-op `dvc repro` take with a seeds-sized artifact (VOC train_aug: 10,582 maps).

Two layouts of the same label maps, each the output of its own one-stage DVC project, measured in the same run:
  - wsss: one sharded zarr group (this project's dense-map artifact),
  - baseline: one PNG per image (what most WSSS code writes).
Label maps are 500x375 synthetic seeds (a few rectangles each). Prints median seconds over --repeats runs.

    .venv/bin/python benchmarks/dvc_noop.py [--images 10582] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MAKE_ARTIFACT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    from PIL import Image

    layout, n = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)

    def seed_map(i):
        labels = np.zeros((375, 500), np.uint8)
        for _ in range(1 + i % 3):
            y, x = rng.integers(0, 300), rng.integers(0, 420)
            labels[y : y + rng.integers(20, 75), x : x + rng.integers(20, 80)] = rng.integers(1, 21)
        return labels

    ids = [f"{i:06d}" for i in range(n)]
    if layout == "png":
        out = Path("seeds_png")
        out.mkdir()
        for i, image_id in enumerate(ids):
            Image.fromarray(seed_map(i)).save(out / f"{image_id}.png")
    else:
        from wsss_core.store import DenseMapWriter
        writer = DenseMapWriter("seeds.zarr", kind="labels", image_ids=ids, sizes=np.tile([375, 500], (n, 1)),
                                dtype="uint8", provenance={"stage": "benchmark"})
        for i in writer.pending():
            writer.write(i, seed_map(i))
        writer.commit()
    """
)


def run(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def project(root: Path, layout: str, images: int) -> Path:
    out = "seeds_png" if layout == "png" else "seeds.zarr"
    root.mkdir()
    (root / "make.py").write_text(MAKE_ARTIFACT)
    (root / "dvc.yaml").write_text(
        f"stages:\n  seeds:\n    cmd: {sys.executable} make.py {layout} {images}\n"
        f"    deps: [make.py]\n    outs: [{out}]\n"
    )
    for cmd in (["git", "init", "-q"], [DVC, "init", "-q"], [DVC, "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=root, check=True)
    return root


DVC = str(Path(sys.executable).with_name("dvc"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_582)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = f"{REPO}{os.pathsep}{env_path}" if env_path else str(REPO)
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for layout in ("zarr", "png"):
            root = project(Path(tmp) / layout, layout, args.images)
            first = run([DVC, "repro", "-q"], root)
            files = sum(len(f) for _, _, f in os.walk(root / ("seeds.zarr" if layout == "zarr" else "seeds_png")))
            size = sum(p.stat().st_size for p in (root / ".dvc" / "cache").rglob("*") if p.is_file())
            status = [run([DVC, "status", "-q"], root) for _ in range(args.repeats)]
            noop = [run([DVC, "repro", "-q"], root) for _ in range(args.repeats)]
            results[layout] = (statistics.median(status), statistics.median(noop))
            print(
                f"{layout:5s} {args.images} maps: {files:6d} files, cache {size / 2**20:7.1f} MiB, "
                f"first repro {first:6.1f} s, dvc status median {results[layout][0]:.2f} s, "
                f"no-op repro median {results[layout][1]:.2f} s"
            )
        print(
            f"ratio png/zarr: dvc status x{results['png'][0] / results['zarr'][0]:.2f}, "
            f"no-op repro x{results['png'][1] / results['zarr'][1]:.2f}"
        )


if __name__ == "__main__":
    main()
