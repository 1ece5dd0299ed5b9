"""CLIP-ES CAM generation: seconds per image and peak memory, batched backward versus one backward per class.

ViT-B/16 with random weights (same cost as OpenAI's), a 320x480 image, 1, 2 and 3 present classes; each
configuration runs in its own process so its peak RSS is its own. Prints medians over --repeats images.

    .venv/bin/python benchmarks/cam_clip_es.py [--repeats 7] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def measure(classes: int, batched: bool, repeats: int, device: str) -> dict:
    import numpy as np
    import torch

    from wsss_core.cam.clip_es import ClipEs, ClipEsSettings
    from wsss_core.models.clip import load_clip
    from wsss_core.prompts import CLIP_ES_BACKGROUND_VOC, CLIP_ES_TEMPLATE, CLIP_ES_VOC_NAMES, prompts_for

    torch.manual_seed(0)
    clip = load_clip("ViT-B-16", random_init=True, device=device)
    generator = ClipEs(
        clip,
        prompts_for(CLIP_ES_VOC_NAMES, CLIP_ES_TEMPLATE),
        prompts_for(CLIP_ES_BACKGROUND_VOC, CLIP_ES_TEMPLATE),
        ClipEsSettings(batched_gradients=batched),
    )
    image = np.random.default_rng(0).integers(0, 256, size=(320, 480, 3), dtype=np.uint8)
    class_ids = [1, 8, 15][:classes]
    generator(image, class_ids)  # warm-up
    if clip.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        if clip.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        generator(image, class_ids)
        if clip.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if clip.device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    )
    return {"seconds": statistics.median(times), "peak_mib": peak, "device": str(clip.device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--one", nargs=2, metavar=("CLASSES", "BATCHED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1] == "1", args.repeats, args.device)))
        return
    print("classes  batched s/img  loop s/img  loop/batched  peak MiB batched / loop")
    for classes in (1, 2, 3):
        results = {}
        for batched in (True, False):
            command = [sys.executable, __file__, "--one", str(classes), str(int(batched))]
            command += ["--repeats", str(args.repeats), "--device", args.device]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[batched] = json.loads(output.strip().splitlines()[-1])
        fast, slow = results[True], results[False]
        print(
            f"{classes:7d}  {fast['seconds']:13.3f}  {slow['seconds']:10.3f}  {slow['seconds'] / fast['seconds']:12.2f}"
            f"  {fast['peak_mib']:8.0f} / {slow['peak_mib']:.0f}   ({fast['device']}, median of {args.repeats})"
        )


if __name__ == "__main__":
    main()
