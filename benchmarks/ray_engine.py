"""The Ray engine's overhead against the local engine, on the demo's masks and CAMs.

For each engine (local; Ray with one and with two CPU workers) and each job (the demo's Felzenszwalb masks, its
CLIP-ES CAMs with CAA), the real job runs over the demo's training images as its stage runs it, results discarded:
seconds to start the workers (processes, imports, model) and seconds per image once they run, medians of
`--repeats`. Ray's instance is started once, before anything is timed (its start is printed apart). Then an estimate
of COCO train's SAM masks on 8 GPUs from the measured per-image overhead and a given GPU time per image.

Run in the project after `bash scripts/demo.sh` (it reads artifacts/index and the demo CLIP):

    .venv/bin/python benchmarks/ray_engine.py [--repeats 3] [--sam-gpu-seconds 6]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

COCO_TRAIN_IMAGES = 82_081


def measure(engine: dict, job, image_paths: list[Path], item_of, repeats: int) -> tuple[float, float]:
    """Median (seconds to open the engine, seconds per image) of `job` over the images."""
    from wsss_core.data.base import read_image
    from wsss_core.engine import open_engine

    opens, per_image = [], []
    ids = [path.stem for path in image_paths]
    for _ in range(repeats):
        start = time.perf_counter()
        with open_engine(engine, job, "cpu", "benchmark") as running:
            opened = time.perf_counter()
            running.run(range(len(ids)), lambda i: item_of(i, read_image(image_paths[i])), lambda i, r: None, ids)
            done = time.perf_counter()
        opens.append(opened - start)
        per_image.append((done - opened) / len(ids))
    return statistics.median(opens), statistics.median(per_image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sam-gpu-seconds", type=float, default=6.0, help="SAM ViT-H seconds per image on one GPU")
    args = parser.parse_args()

    import ray

    from wsss_core.data.index import read_index
    from wsss_core.drivers.cams import ClipCamJob
    from wsss_core.drivers.masks import MaskJob
    from wsss_core.params import load_params

    params = load_params("params.yaml")
    dataset = read_index(Path("artifacts/index/train.parquet"))
    paths = [Path(sample.image_path) for sample in dataset.samples]
    labels = [list(sample.labels) for sample in dataset.samples]
    jobs = {
        "masks (felzenszwalb)": (
            MaskJob(params["sam_masks"]["runs"]["felzenszwalb"]),
            lambda i, image: (paths[i].stem, image),
        ),
        "cams (clip_es caa)": (
            ClipCamJob(params["cams"]["runs"]["caa"], params["models"]["clip"], tuple(dataset.class_names)),
            lambda i, image: (image, labels[i], image.shape[:2]),
        ),
    }
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    print(f"ray.init (2 CPUs): {time.perf_counter() - start:.1f} s, once; {len(paths)} demo images per run")
    engines = {"local": {"kind": "local"}}
    for workers in (1, 2):
        ray_options = dict(params["engine"]["ray"], max_workers=workers)
        engines[f"ray, {workers} worker{'s' * (workers > 1)}"] = {"kind": "ray", "ray": ray_options}

    overhead = []
    print(f"{'job':22} {'engine':16} {'start s':>8} {'ms/image':>9} {'vs local':>9}")
    for job_name, (job, item_of) in jobs.items():
        local_per_image = None
        for engine_name, engine in engines.items():
            opened, per_image = measure(engine, job, paths, item_of, args.repeats)
            local_per_image = local_per_image or per_image
            ratio = per_image / local_per_image
            print(f"{job_name:22} {engine_name:16} {opened:8.2f} {per_image * 1e3:9.1f} {ratio:8.2f}x")
            if engine_name == "ray, 1 worker":
                overhead.append(per_image - local_per_image)
    ray.shutdown()

    # Ray's cost per image is a round trip that does not grow with the model: the demo's jobs bound it.
    per_image_overhead = max(overhead)
    gpu_hours = COCO_TRAIN_IMAGES * (args.sam_gpu_seconds + max(per_image_overhead, 0.0)) / 8 / 3600
    print(
        f"\nRay's overhead: {per_image_overhead * 1e3:.1f} ms per image (one worker against local, the larger of the "
        f"two jobs). COCO train SAM masks on 8 GPUs at {args.sam_gpu_seconds:g} s per image: "
        f"{COCO_TRAIN_IMAGES:,} x ({args.sam_gpu_seconds:g} s + {max(per_image_overhead, 0.0) * 1e3:.0f} ms) / 8 = "
        f"{gpu_hours:.1f} h, of which Ray {COCO_TRAIN_IMAGES * max(per_image_overhead, 0.0) / 8 / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
