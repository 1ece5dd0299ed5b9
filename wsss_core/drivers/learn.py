"""Prompt learning for FMA-WSSS's two tasks on a frozen CLIP: the loss of a batch, the training loop, the stage.

Reference settings (docs/methods.md, FMA-WSSS): SGD lr 1e-3, momentum 0.9, weight decay 5e-4, batch 16; 500 warm-up
iterations at a constant 1e-5, then cosine annealing from 1e-3 to 0 over the remaining iterations; AMP (fp16
autocast with gradient scaling) on CUDA. Classification: 1,800 iterations of the multi-label contrastive loss.
Segmentation: 17,000 iterations of the CAM activation loss against the coarse seeds.

The loop checkpoints every `checkpoint_every` iterations (prompts, optimiser and scaler state, the loss curve) in a
scratch directory keyed by everything the result depends on; a rerun after a kill resumes from the last checkpoint.
Batches depend only on (seed, iteration) (see `batches.py`), so the resumed run ends with the same prompts, bit for
bit, as an uninterrupted one (on the same device and library versions).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wsss_core.cam.learned import gradcams_of_present, image_logits
from wsss_core.models.clip import ClipModel
from wsss_core.models.clip_visual import VisualRunner
from wsss_core.prompts.fma import FmaPrompts
from wsss_core.prompts.losses import (
    cam_activation_loss,
    multilabel_bce_loss,
    multilabel_contrastive_loss,
    pixel_bce_loss,
)

CLASSIFICATION_LOSSES = {"mcl": multilabel_contrastive_loss, "bce": multilabel_bce_loss}
SEGMENTATION_LOSSES = {"cal": cam_activation_loss, "ce": pixel_bce_loss}


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation of one task; defaults are the reference's except `iterations` (1,800 cls / 17,000 seg)."""

    iterations: int
    loss: str = "mcl"
    batch_size: int = 16
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_iterations: int = 500
    warmup_lr: float = 1e-5
    stop_after: int | None = None  # stop early on the schedule of `iterations` (the reference picked checkpoints)
    checkpoint_every: int = 100
    amp: bool = True
    workers: int = 0

    def __post_init__(self) -> None:
        if self.loss not in CLASSIFICATION_LOSSES and self.loss not in SEGMENTATION_LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of mcl, bce, cal, ce")
        if self.iterations < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("iterations, batch_size and checkpoint_every must be at least 1")
        if self.stop_after is not None and not 1 <= self.stop_after <= self.iterations:
            raise ValueError(f"stop_after must lie in 1..iterations ({self.iterations}), got {self.stop_after}")

    @property
    def last_iteration(self) -> int:
        return self.iterations if self.stop_after is None else self.stop_after


def learning_rate(iteration: int, settings: TrainSettings) -> float:
    """Constant warm-up lr for the first `warmup_iterations` (0-based), then cosine from `lr` down to 0."""
    if iteration < settings.warmup_iterations:
        return settings.warmup_lr
    span = settings.iterations - settings.warmup_iterations
    progress = (iteration - settings.warmup_iterations) / span
    return 0.5 * settings.lr * (1.0 + math.cos(math.pi * progress))


def batch_loss(
    prompts: FmaPrompts,
    runner: VisualRunner,
    batch: dict[str, torch.Tensor],
    loss: str,
    logit_scale: float,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The task loss of one batch (see `batches.TrainingBatches` for the batch layout).

    Classification losses read only the logits, so the image tower runs without grad. Segmentation losses need the
    CAMs of the present classes with the graph of their Grad-CAM weights (second order), from the last block on.
    """
    device = runner.clip.device
    images, present = batch["images"].to(device), batch["present"].to(device)
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    with amp:
        text = prompts()
    if loss in CLASSIFICATION_LOSSES:
        with torch.no_grad():
            trace = runner.forward(images, autocast_dtype=autocast_dtype)
        logits = image_logits(runner, trace.tokens[-1], text, logit_scale)
        return CLASSIFICATION_LOSSES[loss](logits[:, : prompts.num_foreground], present)
    if "seeds" not in batch:
        raise ValueError(f"loss {loss!r} needs seed labels in the batch")
    # capture_layers: the explicit softmax attention has the double backward that fused attention kernels lack
    trace = runner.forward(images, capture_layers=[-1], grad_from_layer=-1, autocast_dtype=autocast_dtype)
    activations = trace.blocks[runner.num_layers - 1].ln_1
    logits = image_logits(runner, trace.tokens[-1], text, logit_scale)
    cams, items, class_ids = gradcams_of_present(activations, logits, present, trace.grid, create_graph=True)
    return SEGMENTATION_LOSSES[loss](cams, batch["seeds"].to(device)[items], class_ids)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    from wsss_core.store.atomic import atomic_file

    with atomic_file(path) as handle:
        torch.save(state, handle)


def _load_checkpoint(path: Path, device: torch.device) -> dict[str, Any] | None:
    from wsss_core.models.checkpoints import CheckpointError

    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # a torn or foreign file: say which, the user can delete it
        raise CheckpointError(f"{path}: unreadable training checkpoint ({error}); delete it to start over") from error


def train_prompts(
    prompts: FmaPrompts,
    clip: ClipModel,
    batches: torch.utils.data.Dataset,
    settings: TrainSettings,
    checkpoint_path: Path,
    description: str = "learn",
) -> list[tuple[int, float, float]]:
    """Train `prompts` in place on `batches` (item i = batch of iteration i); return the curve rows
    (iteration, loss, lr) of every iteration run, including those before a resume."""
    from wsss_core.progress import progress

    device = clip.device
    runner = VisualRunner(clip)
    logit_scale = float(clip.model.logit_scale.exp())
    use_amp = settings.amp and device.type == "cuda"
    autocast_dtype = torch.float16 if use_amp else None
    optimizer = torch.optim.SGD(
        prompts.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp, init_scale=2.0**16)
    start, curve = 0, []
    state = _load_checkpoint(checkpoint_path, device)
    if state is not None:
        prompts.load_state_dict(state["prompts"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start, curve = state["iteration"], [tuple(row) for row in state["curve"]]

    stop = settings.last_iteration
    loader = torch.utils.data.DataLoader(
        batches, batch_size=None, sampler=range(start, stop), num_workers=settings.workers
    )
    iterations = progress(range(start, stop), description, total=stop - start, unit="it")
    for iteration, batch in zip(iterations, loader, strict=True):
        lr = learning_rate(iteration, settings)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = batch_loss(prompts, runner, batch, settings.loss, logit_scale, autocast_dtype)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        curve.append((iteration, float(loss.detach()), lr))
        done = iteration + 1
        if done % settings.checkpoint_every == 0 and done < stop:
            _save_checkpoint(
                checkpoint_path,
                {
                    "iteration": done,
                    "prompts": prompts.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "curve": [list(row) for row in curve],
                },
            )
    return curve


# ---------------------------------------------------------------------------------------------------------- stage


def _task_words(params: dict[str, Any], class_names: tuple[str, ...]) -> tuple[list[str], list[str]]:
    from wsss_core.prompts.vocabulary import background_vocabulary, class_words

    foreground = class_words(params["class_names"], class_names, "learn.class_names")
    return foreground, background_vocabulary(params["background_words"])


def _check_seeds(seeds_path: Path, image_ids: list[str], index_path: Path) -> None:
    from wsss_core.store.dense import DenseMaps
    from wsss_core.store.table import ArtifactError

    if not seeds_path.exists():
        raise ArtifactError(f"{seeds_path}: seeds not found (the learn run's `reads`; has its seeds stage run?)")
    seeds = DenseMaps(seeds_path, kind="labels")
    missing = sorted(set(image_ids) - set(seeds.image_ids))
    if missing:
        raise ArtifactError(f"{seeds_path}: no seeds for image {missing[0]!r} of the training index")
    seeds.check_images(index_path)


def _check_params(learn: dict[str, Any], name: str, patch_size: int) -> None:
    """Cross-key checks the schema cannot express, reported with the keys' names."""
    from wsss_core.params import ParamsError

    augment, task_params = learn["training"]["augment"], learn["runs"][name]
    if augment["crop"] % patch_size:
        raise ParamsError(
            f"learn.training.augment.crop: {augment['crop']} is not a multiple of the patch size {patch_size}"
        )
    if augment["min_short_side"] < augment["crop"]:
        raise ParamsError(
            f"learn.training.augment.min_short_side: {augment['min_short_side']} is smaller than crop {augment['crop']}"
        )
    low, high = augment["long_side"]
    if low > high:
        raise ParamsError(f"learn.training.augment.long_side: {[low, high]} is not [low, high]")
    if task_params["stop_after"] is not None and task_params["stop_after"] > task_params["iterations"]:
        raise ParamsError(
            f"learn.runs.{name}.stop_after: {task_params['stop_after']} is beyond iterations "
            f"({task_params['iterations']})"
        )


def write_curves(directory: Path, curve: list[tuple[int, float, float]]) -> None:
    """loss.csv and lr.csv (iteration, value) for `dvc plots`, written atomically."""
    from wsss_core.store.atomic import atomic_file

    directory.mkdir(parents=True, exist_ok=True)
    for name, column in (("loss", 1), ("lr", 2)):
        lines = [f"iteration,{name}"] + [f"{row[0]},{row[column]:.8g}" for row in curve]
        with atomic_file(directory / f"{name}.csv", "w") as handle:
            handle.write("\n".join(lines) + "\n")


def learn_prompts(name: str, index_path: Path, artifacts_dir: Path, metrics_dir: Path, params: dict[str, Any]) -> Path:
    """The learn stage: train the prompts of the run `learn.runs.<name>` on the index's images and write
    `artifacts_dir/prompts_<name>/` (context tensors + provenance) and `metrics_dir/learn_<name>/` curves."""
    from wsss_core.data.index import read_index
    from wsss_core.hashing import sha256_path
    from wsss_core.models.loading import clip_from_params
    from wsss_core.prompts.batches import AugmentSettings, TrainingBatches
    from wsss_core.prompts.fma import PROMPTS_FILE, prompts_bytes
    from wsss_core.provenance import canonical, dumps, make_provenance
    from wsss_core.store.scratch import resumable_work
    from wsss_core.store.seal import sealed_directory

    learn, clip_params = params["learn"], params["models"]["clip"]
    task_params, training = learn["runs"][name], learn["training"]
    task = task_params["task"]
    dataset = read_index(index_path)
    foreground, background = _task_words(learn, dataset.class_names)
    clip = clip_from_params(clip_params, learn["device"])
    _check_params(learn, name, clip.patch_size)
    prompts = FmaPrompts(
        clip,
        task_params["prompt_design"],
        foreground,
        background,
        n_ctx=task_params["n_ctx"],
        init_std=task_params["init_std"],
        seed=training["seed"],
    )
    upstream = {"index": index_path}
    seeds_path = None
    if task == "segmentation":
        seeds_path = Path(task_params["reads"])
        _check_seeds(seeds_path, [sample.image_id for sample in dataset.samples], index_path)
        upstream["seeds"] = seeds_path

    shared_keys = ("amp", "class_names", "background_words", "store_dtype", "training")
    read = {
        "learn": {key: learn[key] for key in shared_keys},
        f"learn.runs.{name}": task_params,
        "models.clip": clip_params,
    }
    inputs = {"read": read, "upstream": {name: sha256_path(path) for name, path in upstream.items()}}
    out = artifacts_dir / f"prompts_{name}"
    with resumable_work(out, canonical(inputs)) as scratch:
        augment = training["augment"]
        batches = TrainingBatches(
            [sample.image_id for sample in dataset.samples],
            [sample.image_path for sample in dataset.samples],
            [sample.labels for sample in dataset.samples],
            num_foreground=len(foreground),
            batch_size=training["batch_size"],
            augment_settings=AugmentSettings(
                color_jitter=augment["color_jitter"],
                long_side=tuple(augment["long_side"]),
                min_short_side=augment["min_short_side"],
                crop=augment["crop"],
                flip=augment["flip"],
            ),
            seed=training["seed"],
            mean=clip.mean,
            std=clip.std,
            seeds_path=seeds_path,
            labels_from=task_params.get("labels", "image"),
        )
        settings = TrainSettings(
            iterations=task_params["iterations"],
            loss=task_params["loss"],
            batch_size=training["batch_size"],
            lr=training["lr"],
            momentum=training["momentum"],
            weight_decay=training["weight_decay"],
            warmup_iterations=training["warmup_iterations"],
            warmup_lr=training["warmup_lr"],
            stop_after=task_params["stop_after"],
            checkpoint_every=learn["checkpoint_every"],
            amp=learn["amp"],
            workers=learn["workers"],
        )
        curve = train_prompts(prompts, clip, batches, settings, scratch / "checkpoint.pt", f"learn {name}")

        provenance = make_provenance(
            f"learn_{name}",
            read,
            upstream=upstream,
            checkpoints={"clip": clip.provenance},
            libraries=("open_clip_torch", "safetensors"),
            details={
                **prompts.description(),
                "split": dataset.split,
                "store_dtype": learn["store_dtype"],
                "iterations_run": settings.last_iteration,
                "final_loss": curve[-1][1],
            },
        )
        with sealed_directory(out) as building:
            (building / PROMPTS_FILE).write_bytes(prompts_bytes(prompts, learn["store_dtype"]))
            (building / "provenance.json").write_text(dumps(provenance))
        write_curves(metrics_dir / f"learn_{name}", curve)
    return out
