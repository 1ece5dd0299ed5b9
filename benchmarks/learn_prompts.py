"""FMA-WSSS prompt learning: seconds per training iteration and peak memory, for each task.

ViT-B/16 with random weights (same cost as OpenAI's), batch 16 of 224x224 crops, VOC's 20 classes and 25 background
prompts, 1-3 present classes per image. classification: unified-context prompts, multi-label contrastive loss (image
tower without grad). segmentation: class-specific prompts, CAM activation loss through the second-order Grad-CAM.
Each task runs in its own process so its peak RSS (CPU) or peak allocation (CUDA) is its own. Prints medians over
--repeats iterations after one warm-up iteration.

    .venv/bin/python benchmarks/learn_prompts.py [--repeats 3] [--device auto] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

DESIGNS = {"classification": ("unified_context", "mcl"), "segmentation": ("csc_prepend", "cal")}


def synthetic_batch(batch_size: int, size: int, generator) -> dict:
    import torch

    images = torch.randn((batch_size, 3, size, size), generator=generator)
    present = torch.zeros((batch_size, 20), dtype=torch.bool)
    seeds = torch.zeros((batch_size, size, size), dtype=torch.long)
    for item in range(batch_size):
        classes = torch.randperm(20, generator=generator)[: 1 + item % 3] + 1
        present[item, classes - 1] = True
        for order, class_id in enumerate(classes.tolist()):  # a band per class, the rest background
            seeds[item, :, order * size // 4 : (order + 1) * size // 4] = class_id
    return {"images": images, "present": present, "seeds": seeds}


def measure(task: str, repeats: int, device: str, batch_size: int) -> dict:
    import torch

    from wsss_core.drivers.learn import batch_loss
    from wsss_core.models.clip import load_clip
    from wsss_core.models.clip_visual import VisualRunner
    from wsss_core.prompts import CLIP_ES_BACKGROUND_VOC, CLIP_ES_VOC_NAMES
    from wsss_core.prompts.fma import FmaPrompts

    torch.manual_seed(0)
    clip = load_clip("ViT-B-16", random_init=True, device=device)
    design, loss_name = DESIGNS[task]
    prompts = FmaPrompts(clip, design, CLIP_ES_VOC_NAMES, CLIP_ES_BACKGROUND_VOC, n_ctx=16)
    runner = VisualRunner(clip)
    optimizer = torch.optim.SGD(prompts.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    amp = clip.device.type == "cuda"
    scaler = torch.amp.GradScaler(clip.device.type, enabled=amp)
    batch = synthetic_batch(batch_size, 224, torch.Generator().manual_seed(0))
    logit_scale = float(clip.model.logit_scale.exp())

    def step() -> float:
        loss = batch_loss(prompts, runner, batch, loss_name, logit_scale, torch.float16 if amp else None)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss)

    step()  # warm-up
    if clip.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        if clip.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if clip.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if clip.device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    )
    parameters = sum(parameter.numel() for parameter in prompts.parameters())
    return {
        "seconds": statistics.median(times),
        "peak_mib": peak,
        "device": str(clip.device),
        "threads": torch.get_num_threads(),
        "parameters": parameters,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--one", metavar="TASK", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.repeats, args.device, args.batch)))
        return
    print(f"task            s/iteration  images/s  peak MiB  learnable  (batch {args.batch}, 224x224, ViT-B/16)")
    for task in DESIGNS:
        command = [sys.executable, __file__, "--one", task, "--repeats", str(args.repeats)]
        command += ["--device", args.device, "--batch", str(args.batch)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        print(
            f"{task:14s}  {result['seconds']:11.2f}  {args.batch / result['seconds']:8.2f}  {result['peak_mib']:8.0f}"
            f"  {result['parameters']:9d}  ({result['device']}, {result['threads']} threads, median of {args.repeats})"
        )


if __name__ == "__main__":
    main()
