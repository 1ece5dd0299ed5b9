"""ExCEL and VDA adapter learning: seconds per training iteration and peak memory at ExCEL's reference settings.

ViT-B/16 with random weights (open_clip's ViT-B-16 config, nothing downloaded; the same cost as OpenAI's), batch 4
of 320x320 crops from 500x375 images (VOC's typical size, rescaled by 0.5-2.0), VOC's 20 classes and 25 background
words with a 112-attribute bank, 1-3 present classes per image; 5 calibrated blocks, CAA on the last 6, PAR with 20
iterations, the WeCLIP head (256 wide, 3 layers). One iteration is everything the training loop does: the batch,
the CLIP pass, the head, pseudo labels (CAA, PAR), both losses, backward and the AdamW update.

Each phase in its own process so that its peak RSS (CPU) or peak allocation (CUDA) is its own:
  excel static   iterations before 14k: SVC's static CAMs, static CAA, pair labels from the pseudo labels
  excel dynamic  from 24k: also LVC's dynamic CAMs, the dynamic CAA and pair labels from the segmentation argmax
  vda static     VDA at 10k (VOC's intra_from): ExCEL's static step on template texts, plus the invertible network,
                 both mixtures' losses and each image's described texts (6 couplings 512 wide, 10 attributes per class)
  vda dynamic    VDA at 24k: the same on ExCEL's dynamic step
Before its inn_from (8k) a VDA iteration is an ExCEL one. Prints medians over --repeats iterations after one warm-up
iteration (VDA's mixtures start from that warm-up's batch). Papers' figures (RTX 3090): ExCEL 0.18 s per iteration
(30k in 90 min), 3.2 GB; VDA 117 min and 4.5 GB in all.

    .venv/bin/python benchmarks/adapter_iteration.py [--repeats 3] [--device auto]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time

PHASES = {  # the iteration each phase's steps stand at
    "excel static": 0,
    "excel dynamic": 24000,
    "vda static": 10000,
    "vda dynamic": 24000,
}


class RandomImages:
    """500x375 random images, each with 1-3 of VOC's 20 classes."""

    def __init__(self, count: int = 8) -> None:
        import numpy as np

        rng = np.random.default_rng(0)
        self.items = [
            (rng.integers(0, 256, (375, 500, 3), dtype=np.uint8), sorted(rng.choice(20, 1 + i % 3, replace=False) + 1))
            for i in range(count)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def measure(phase: str, repeats: int, device: str) -> dict:
    import numpy as np
    import torch

    from wsss_core.adapter import excel, vda
    from wsss_core.adapter.training import make_batch, make_optimizer, training_step
    from wsss_core.cam.excel.attributes import aggregate_attributes
    from wsss_core.models.clip import load_clip
    from wsss_core.models.clip_text import encode_text
    from wsss_core.prompts import CLIP_ES_BACKGROUND_VOC, CLIP_ES_VOC_NAMES, prompts_for

    torch.manual_seed(0)
    clip = load_clip("ViT-B-16", random_init=True, device=device)
    method = vda if phase.startswith("vda") else excel
    run = {name: spec.default for name, spec in method.SETTINGS.items()}  # the reference's defaults
    texts = encode_text(clip, prompts_for(list(CLIP_ES_VOC_NAMES) + list(CLIP_ES_BACKGROUND_VOC)))
    settings = excel.settings_of(run, checkpoint_every=500)
    step_loss = training_step
    if method is excel:
        bank = np.random.default_rng(0).standard_normal((texts.shape[1], 112)).astype(np.float32) * 0.05
        texts = aggregate_attributes(texts, torch.from_numpy(bank).to(texts.device), len(CLIP_ES_VOC_NAMES))
    else:
        settings = dataclasses.replace(settings, extra_lr_scales=(("inn", run["inn_lr_scale"]),))
        step_loss = vda.make_step(run)
    model = method.build_model(clip, texts, len(CLIP_ES_VOC_NAMES), run).to(clip.device).train()
    optimizer = make_optimizer(model, settings)
    use_amp = settings.amp and clip.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    data, at = RandomImages(), PHASES[phase]

    def step(index: int) -> float:
        images, present = make_batch(data, index, settings)
        loss, _ = step_loss(model, images.to(clip.device), present, at, settings)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss)

    step(0)  # warm-up
    if clip.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for index in range(1, repeats + 1):
        if clip.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step(index)
        if clip.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if clip.device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    )
    return {
        "seconds": statistics.median(times),
        "peak_mib": peak,
        "device": str(clip.device),
        "threads": torch.get_num_threads(),
        "trained": sum(parameter.numel() for parameter in model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--one", metavar="PHASE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.repeats, args.device)))
        return
    print("phase          s/iteration  h per 30k  peak MiB  trained  (batch 4, 320x320 crops, ViT-B/16)")
    for phase in PHASES:
        command = [sys.executable, __file__, "--one", phase, "--repeats", str(args.repeats), "--device", args.device]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        print(
            f"{phase:13s}  {result['seconds']:11.2f}  {result['seconds'] * 30000 / 3600:9.1f}"
            f"  {result['peak_mib']:8.0f}  {result['trained']:7d}"
            f"  ({result['device']}, {result['threads']} threads, median of {args.repeats})"
        )


if __name__ == "__main__":
    main()
