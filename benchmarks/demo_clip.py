"""The demo CLIP's pretraining (wsss_core/demo/pretrain.py): seconds per step against a baseline run alongside.

The baseline is the loop as it was before 786cafe: open_clip's forward on 77-token captions, AdamW over the whole
49,408-row token embedding, every caption tokenized afresh and the scenes grouped by label set at every batch. The
product runs the text tower on the captions cut at their end token (contrastive_loss), steps only the rows a caption
can look up (CaptionVocabularyEmbedding), tokenizes each distinct caption once and groups the scenes once. Both
train from the same seed on the same pretraining set with the demo's params (fewer steps). Cutting the padding
changes only the order of float sums, so the script prints how far the two runs' weights and losses end apart, then
the median seconds of a whole run (rendering the pretraining set included) per step over --repeats runs of each,
alternating.

    .venv/bin/python benchmarks/demo_clip.py [--steps 500] [--repeats 2]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

from wsss_core.pinned_cpu import pin_cpu

pin_cpu()  # as the demo_clip stage runs (demo.clip.pinned_cpu)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from wsss_core.data.synthetic import SYNTHETIC_CLASSES  # noqa: E402
from wsss_core.demo import pretrain  # noqa: E402
from wsss_core.models.clip import load_clip  # noqa: E402


def baseline_batch(rng: np.random.Generator, data: pretrain.PretrainingSet, batch_size: int, fraction: float):
    """draw_batch as it was: the scenes grouped by label set at every call (the same draws)."""
    closeups = np.flatnonzero(data.closeup)
    scenes = np.flatnonzero(~data.closeup)
    chosen = list(rng.choice(closeups, int(round(batch_size * fraction)), replace=False))
    by_labels: dict[tuple[int, ...], list[int]] = {}
    for index in scenes:
        by_labels.setdefault(data.labels[index], []).append(int(index))
    label_sets = sorted(by_labels)
    for slot in range(batch_size - len(chosen)):
        if slot % len(label_sets) == 0:
            order = rng.permutation(len(label_sets))
        members = by_labels[label_sets[order[slot % len(label_sets)]]]
        chosen.append(members[int(rng.integers(len(members)))])
    return np.asarray(chosen, dtype=np.int64)


def baseline(settings: dict, domain: dict) -> tuple[dict[str, torch.Tensor], float, float]:
    """The earlier loop, whole embedding in AdamW: (final weights, last loss, seconds per step, the set's rendering
    included)."""
    import open_clip

    start = time.perf_counter()
    clip = load_clip(
        "demo-clip", model_cfg=settings["model_cfg"], random_init=True, seed=settings["seed"], device="cpu"
    )
    model = clip.model.train().requires_grad_(True)
    model.logit_scale.requires_grad_(False)
    optimizer = torch.optim.AdamW(
        pretrain._parameter_groups(model, settings["weight_decay"]), lr=settings["lr"], betas=(0.9, 0.98), eps=1e-6
    )
    size = settings["model_cfg"]["vision_cfg"]["image_size"]
    data = pretrain.build_pretraining_set(
        settings["scenes"], settings["closeups"], (size, size), settings["seed"], **domain
    )
    mean, std = torch.tensor(clip.mean).view(1, 3, 1, 1), torch.tensor(clip.std).view(1, 3, 1, 1)
    pixels = torch.from_numpy(data.images).permute(0, 3, 1, 2)
    loss_function, steps = open_clip.ClipLoss(), settings["steps"]
    for step in range(steps):
        rng = np.random.default_rng([settings["seed"], step])
        batch = baseline_batch(rng, data, settings["batch_size"], settings["closeup_fraction"])
        images = pretrain.augment((pixels[batch].float() / 255 - mean) / std, rng)
        texts = clip.tokenizer([pretrain.caption(data.labels[i], SYNTHETIC_CLASSES, rng) for i in batch])
        lr = pretrain.learning_rate(step, steps, settings["lr"], settings["warmup_steps"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.no_grad():
            model.logit_scale.fill_(math.log(pretrain.logit_scale(step, steps, settings["logit_scale_start"], 100.0)))
        loss = loss_function(*model(images, texts))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = (time.perf_counter() - start) / steps
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}, loss.item(), seconds


def product(settings: dict, domain: dict, work: Path) -> tuple[dict[str, torch.Tensor], float, float]:
    """The product's pretrain_demo_clip: (final weights, last loss, seconds per step, the set's rendering included)."""
    start = time.perf_counter()
    out = pretrain.pretrain_demo_clip(
        work / "clip", work / "curve.csv", settings, domain, device="cpu", scratch_root=work / "scratch"
    )
    seconds = time.perf_counter() - start
    last_loss = float((work / "curve.csv").read_text().splitlines()[-1].split(",")[1])
    return load_file(str(out / "model.safetensors")), last_loss, seconds / settings["steps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    params = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath("params.yaml").read_text())
    settings = {**params["demo"]["clip"], "steps": args.steps, "checkpoint_every": args.steps + 1}
    domain = {key: params["demo"]["data"][key] for key in ("min_objects", "max_objects")}
    times: dict[str, list[float]] = {"baseline": [], "product": []}
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as work:
            weights, loss, seconds = product(settings, domain, Path(work))
        times["product"].append(seconds)
        reference, reference_loss, seconds = baseline(settings, domain)
        times["baseline"].append(seconds)
        if repeat == 0:
            apart = max(float((reference[name] - weights[name]).abs().max()) for name in reference)
            print(f"after {args.steps} steps: last loss {loss:.6f} vs {reference_loss:.6f}, weights {apart:.1e} apart")
    product_ms = 1000 * statistics.median(times["product"])
    baseline_ms = 1000 * statistics.median(times["baseline"])
    print(f"threads {torch.get_num_threads()}, batch {settings['batch_size']}, medians of {args.repeats} runs")
    print(f"baseline  {baseline_ms:7.1f} ms/step")
    print(f"product   {product_ms:7.1f} ms/step   {baseline_ms / product_ms:.2f}x")


if __name__ == "__main__":
    main()
