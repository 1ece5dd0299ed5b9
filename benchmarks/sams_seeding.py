"""SAMS seeding time per image on one CPU core: ~100 masks at 500x375, 2 present classes.

Three measurements on the same images: SAMS alone on masks already in run-length form; SAMS including reading the
image's records from a parquet table and decoding their RLE strings (what the seeds stage does per image); and
SAMS given dense (M, H, W) masks, which must first be turned into runs. Masks as in sam_storage.py. Prints
medians of CPU time (one thread).

    .venv/bin/python benchmarks/sams_seeding.py [--images 10] [--repeats 5]
"""

from __future__ import annotations

import os

for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = "1"  # one core, set before numpy starts its thread pools

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from sam_storage import sam_like_masks, sam_records  # noqa: E402


def timed(function, repeats: int) -> float:
    """Median CPU seconds of the process per call: on a shared machine the wall clock also counts other jobs."""
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return statistics.median(times)


def measure_image(cams: np.ndarray, masks: np.ndarray, levels: np.ndarray, table, repeats: int) -> dict:
    """Median seconds of SAMS on one image: on decoded runs, from the stored records, from dense masks."""
    from wsss_core.masks.records import ImageMasks, read_image_masks
    from wsss_core.seeding.sams import sams_labels

    stored = read_image_masks(table, "img", kept_only=False)
    stored.runs  # noqa: B018 (decoded here, outside the first measurement)
    return {
        "runs": timed(lambda: sams_labels(cams, [3, 15], stored, 0.6), repeats),
        "records": timed(
            lambda: sams_labels(cams, [3, 15], read_image_masks(table, "img", kept_only=False), 0.6), repeats
        ),
        "dense": timed(
            lambda: sams_labels(cams, [3, 15], ImageMasks(masks, levels, np.ones(len(masks))), 0.6), repeats
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--masks", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    from wsss_core.masks.records import records_to_table

    torch.set_num_threads(1)
    height, width = 375, 500
    rng = np.random.default_rng(0)
    results = {"runs": [], "records": [], "dense": []}
    coverage = []
    for _ in range(args.images):
        masks, levels = sam_like_masks(rng, height, width, args.masks)
        table = records_to_table("img", sam_records(masks, levels, rng, uncompressed=False))
        cams = rng.random((2, height, width), dtype=np.float32)
        for name, seconds in measure_image(cams, masks, levels, table, args.repeats).items():
            results[name].append(seconds)
        coverage.append(masks.reshape(len(masks), -1).sum() / (height * width))
    print(
        json.dumps(
            {
                "images": args.images,
                "masks_per_image": args.masks,
                "image_size": [height, width],
                "classes": 2,
                "mask_pixels_per_image_pixel": round(float(np.mean(coverage)), 2),
                "ms_per_image_sams_on_runs": 1000 * statistics.median(results["runs"]),
                "ms_per_image_including_record_decoding": 1000 * statistics.median(results["records"]),
                "ms_per_image_from_dense_masks": 1000 * statistics.median(results["dense"]),
                "threads": torch.get_num_threads(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
