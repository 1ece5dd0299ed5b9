"""Pretraining the demo CLIP: a small open_clip CLIP learns the synthetic domain from captioned images.

No CLIP weights can be downloaded on a fresh machine, and the CAMs of random weights mean nothing. So the demo
trains its own CLIP, of open_clip's own architecture and with open_clip's own loss (`ClipLoss`), the way CLIP was
trained: images paired with captions, contrastively. The images are a separate draw of the demo generator, never the
dataset's: scenes like the dataset's (caption: every class present, "a photo of a star and a disc.") and close-ups of
single objects ("a photo of a star."), which teach the textures and shapes far faster than scenes alone. A caption
names the classes its render contains (image-level labels); no mask is ever trained on.

What makes Grad-CAM on the result localise (the CLIP-ES CAM reads the mean of the projected patch tokens and scores
it at logit scale 100):
- the visual tower pools by averaging its patch tokens (`pool_type: avg`), so the embedding trained is exactly the
  one CLIP-ES explains, and every patch token is trained to carry the class evidence where it is;
- the temperature rises log-linearly to CLIP's final logit scale of 100 (which CLIP-ES hard-codes): a model trained
  at a lower one spreads its cosines so widely that a softmax at 100 saturates and the Grad-CAM gradients vanish;
- small patches (8 px: the textures' scale), trained at a small image size and run on larger images through the
  interpolated positional embedding, as CLIP-ES does with real CLIP;
- batches hold scenes with distinct label sets, so a caption's negatives never share its text.

Deterministic: every batch (images, augmentation, caption word order) is drawn from a generator seeded by
(seed, step), the model from `seed`; a killed run resumes from its last checkpoint in `.wsss_scratch/` and ends with
the same bytes as an uninterrupted one (on the same machine and thread count).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsss_core.data.synthetic import SYNTHETIC_CLASSES, render_closeup, render_scene
from wsss_core.params import ParamsError
from wsss_core.progress import progress
from wsss_core.provenance import canonical, dumps, make_provenance
from wsss_core.store.atomic import atomic_file
from wsss_core.store.scratch import DEFAULT_SCRATCH, artifact_lock_file, hold_lock, release_lock, resume_key
from wsss_core.store.seal import sealed_directory

# Seed-sequence tags: pretraining images are drawn from streams the dataset generator ([seed, position]) never uses.
SCENE_STREAM = 101
CLOSEUP_STREAM = 102
JPEG_QUALITY = 95  # as the dataset's JPEGImages, so pretraining pixels look like the pixels the CAMs see
MAX_LOGIT_SCALE = 100.0  # open_clip clamps the learned scale here; CLIP-ES scores at exactly this value
ARTIFACT_FILES = ("model.safetensors", "model_cfg.json", "provenance.json")
# In the resume key: 2, the state holds CaptionVocabularyEmbedding's tensors, not the full token embedding; 3, the
# captions are cut at their end token (contrastive_loss), so a state of 2 would resume other bits.
STATE_FORMAT = 3


@dataclass(frozen=True)
class PretrainingSet:
    """Captioned pretraining images: (N, H, W, 3) uint8 and the image-level labels (class ids 1..6) of each."""

    images: np.ndarray
    labels: list[tuple[int, ...]]
    closeup: np.ndarray  # (N,) bool: a single-object close-up rather than a scene

    @cached_property
    def scenes_by_labels(self) -> dict[tuple[int, ...], list[int]]:
        """The scenes' indices, ascending, per label set (worked out once: batches are drawn thousands of times)."""
        by_labels: dict[tuple[int, ...], list[int]] = {}
        for index in np.flatnonzero(~self.closeup):
            by_labels.setdefault(self.labels[index], []).append(int(index))
        return by_labels


def _jpeg_round_trip(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def build_pretraining_set(
    scenes: int, closeups: int, image_size: tuple[int, int], seed: int, min_objects: int, max_objects: int
) -> PretrainingSet:
    """Render `scenes` scenes and `closeups` close-ups (classes in turn) of the synthetic domain, JPEG-compressed."""
    num_classes = len(SYNTHETIC_CLASSES) - 1
    images, labels = [], []
    for number in progress(range(scenes), "demo_clip: scenes", total=scenes):
        image, mask = render_scene(
            [seed, SCENE_STREAM, number], image_size, number % num_classes + 1, min_objects, max_objects
        )
        images.append(_jpeg_round_trip(image))
        labels.append(tuple(int(c) for c in np.unique(mask) if 0 < c < len(SYNTHETIC_CLASSES)))
    for number in progress(range(closeups), "demo_clip: close-ups", total=closeups):
        class_index = number % num_classes + 1
        images.append(_jpeg_round_trip(render_closeup([seed, CLOSEUP_STREAM, number], image_size, class_index)))
        labels.append((class_index,))
    closeup = np.zeros(len(images), dtype=bool)
    closeup[scenes:] = True
    return PretrainingSet(np.stack(images), labels, closeup)


def caption(labels: tuple[int, ...], class_names: tuple[str, ...], rng: np.random.Generator) -> str:
    """The caption naming every class in `labels`, in an order drawn from `rng`: "a photo of a star and a disc."."""
    if not labels:
        raise ValueError("a caption needs at least one class")
    words = [f"a {class_names[labels[i]]}" for i in rng.permutation(len(labels))]
    listed = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return f"a photo of {listed}."


def draw_batch(rng: np.random.Generator, data: PretrainingSet, batch_size: int, closeup_fraction: float) -> np.ndarray:
    """Indices of one batch: close-ups drawn at random, and scenes whose label sets are all different.

    A caption in a contrastive batch should not have its own text among its negatives; scenes share label sets often
    (6 classes, 1-3 objects), so each scene slot first draws a label set not drawn yet, then one scene of that set.
    Once every set is taken (batches larger than the number of sets) scenes repeat sets.
    """
    closeups = np.flatnonzero(data.closeup)
    by_labels = data.scenes_by_labels
    n_closeups = min(len(closeups), int(round(batch_size * closeup_fraction))) if by_labels else batch_size
    chosen = list(rng.choice(closeups, n_closeups, replace=False)) if n_closeups else []
    label_sets = sorted(by_labels)
    for slot in range(batch_size - n_closeups):
        if slot % len(label_sets) == 0:
            order = rng.permutation(len(label_sets))
        members = by_labels[label_sets[order[slot % len(label_sets)]]]
        chosen.append(members[int(rng.integers(len(members)))])
    return np.asarray(chosen, dtype=np.int64)


def augment(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """One of the 8 rotations/reflections per image: the shapes and textures have no preferred orientation."""
    views = []
    for image in images:
        image = torch.rot90(image, int(rng.integers(4)), dims=(1, 2))
        views.append(image.flip(-1) if rng.random() < 0.5 else image)
    return torch.stack(views)


class CaptionTokens:
    """The tokenizer's rows for captions, each distinct caption tokenized once (a few hundred recur all along)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.rows: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        new = [text for text in dict.fromkeys(captions) if text not in self.rows]
        if new:
            self.rows.update(zip(new, self.tokenizer(new), strict=True))
        return torch.stack([self.rows[text] for text in captions])


def caption_vocabulary(tokenizer: Any, class_names: tuple[str, ...]) -> torch.Tensor:
    """The sorted token ids any caption can hold (padding, start and end included): those of every class set."""
    num_classes = len(class_names) - 1
    label_sets = [
        tuple(c for c in range(1, num_classes + 1) if subset >> (c - 1) & 1) for subset in range(1, 2**num_classes)
    ]
    rng = np.random.default_rng(0)  # the word order does not change which tokens occur
    return torch.unique(tokenizer([caption(labels, class_names, rng) for labels in label_sets]))


class CaptionVocabularyEmbedding(torch.nn.Module):
    """The text tower's token embedding, trained only on the rows a caption can look up.

    The demo CLIP keeps CLIP's tokenizer and its 49,408-row embedding, but its captions use a few dozen tokens.
    AdamW over the whole matrix cost a sixth of each step, and for a row no caption looks up its gradient and
    moments stay zero, so AdamW only scales it by (1 - lr * weight_decay). Here the caption rows are a parameter of
    their own, stepped by the same AdamW, and the other rows are scaled by `decay` after each step: the same
    operations on the same values, so the weights come out bit-identical to training the whole matrix.
    """

    def __init__(self, embedding: torch.nn.Embedding, vocabulary: torch.Tensor) -> None:
        super().__init__()
        weight = embedding.weight.detach()
        vocabulary = vocabulary.to(weight.device)
        lookup = torch.full((weight.shape[0],), -1, dtype=torch.long, device=weight.device)
        lookup[vocabulary] = torch.arange(len(vocabulary), device=weight.device)
        self.register_buffer("other_rows", weight.clone())  # the caption rows in here are stale until `merged`
        self.register_buffer("vocabulary", vocabulary)
        self.register_buffer("lookup", lookup)
        self.rows = torch.nn.Parameter(weight[vocabulary].clone())

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        rows = self.lookup[text]
        if bool((rows < 0).any()):
            unknown = sorted(set(text[rows < 0].tolist()))
            raise ValueError(f"demo_clip: caption tokens {unknown} are outside the caption vocabulary")
        return F.embedding(rows, self.rows)

    @torch.no_grad()
    def decay(self, factor: float) -> None:
        """AdamW's decoupled weight decay on the rows no caption looks up (their update is zero otherwise)."""
        self.other_rows.mul_(factor)

    def merged(self) -> torch.nn.Embedding:
        """The plain embedding: the decayed rows with the trained caption rows written in."""
        weight = self.other_rows.clone()
        weight[self.vocabulary] = self.rows.detach()
        return torch.nn.Embedding.from_pretrained(weight, freeze=False)


def contrastive_loss(clip: Any, images: torch.Tensor, texts: torch.Tensor, loss_function: Any) -> torch.Tensor:
    """open_clip's CLIP forward and `loss_function` (ClipLoss) on a batch of images and caption token ids (B, 77).

    The text tower runs on the captions cut after their last end token (`encode_text_embeddings`): under the causal
    mask no padding token reaches an end token, so the loss and its gradients are those of `clip.model(images,
    texts)` up to the order of float sums. The demo's captions hold at most 14 of the 77 tokens; a demo step
    took 73 instead of 101 ms on the 2-core CPU (alternating 50-step runs).
    """
    from wsss_core.models.clip_text import encode_text_embeddings

    model = clip.model
    image_features = model.encode_image(images, normalize=True)
    text_features = F.normalize(encode_text_embeddings(clip, model.token_embedding(texts), texts), dim=-1)
    return loss_function(image_features, text_features, model.logit_scale.exp())


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine decay to 0 at `steps` (open_clip's schedule)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress_after = (step - warmup) / max(1, steps - warmup)
    return 0.5 * peak * (1 + math.cos(math.pi * progress_after))


def logit_scale(step: int, steps: int, start: float, end: float) -> float:
    """Temperature schedule: log-linear from `start` at step 0 to `end` at the last step."""
    fraction = step / max(1, steps - 1)
    return math.exp(math.log(start) + fraction * (math.log(end) - math.log(start)))


def _check_settings(settings: dict[str, Any]) -> tuple[int, int]:
    """Refuse settings that cannot train a CLIP the CAM stages can explain; return the pretraining image size."""
    cfg = settings["model_cfg"]
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in cfg]
    if missing:
        raise ParamsError(f"demo.clip.model_cfg: lacks {missing[0]} (needs embed_dim, vision_cfg, text_cfg)")
    vision = cfg["vision_cfg"]
    if vision.get("image_size") is None:
        raise ParamsError("demo.clip.model_cfg.vision_cfg.image_size: missing (the pretraining image size)")
    if vision.get("pool_type", "tok") != "avg":
        # CLIP-ES scores the mean of the projected patch tokens; open_clip's average pooling trains that very embedding
        raise ParamsError(
            f"demo.clip.model_cfg.vision_cfg.pool_type: {vision.get('pool_type', 'tok')!r} must be 'avg' (the CAMs "
            "score the mean of the patch tokens, so the demo CLIP is trained on that embedding)"
        )
    if settings["scenes"] + settings["closeups"] < settings["batch_size"]:  # batch_size >= 2: also catches no images
        raise ParamsError(
            f"demo.clip.batch_size: {settings['batch_size']} is more than the {settings['scenes']} scenes and "
            f"{settings['closeups']} close-ups rendered"
        )
    return tuple(np.broadcast_to(np.asarray(vision["image_size"]), 2).tolist())


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's rule: no weight decay on gains, biases, embeddings of one dimension and the logit scale."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        exempt = parameter.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exempt else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _state_path(settings: dict[str, Any], domain: dict[str, Any], scratch_root: Path) -> Path:
    """The resumable training state's file, keyed by everything that determines the training."""
    key = resume_key(canonical({"settings": settings, "domain": domain, "state_format": STATE_FORMAT}))
    return Path(scratch_root) / f"demo_clip-{key}" / "state.pt"


def _save_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, curve: list) -> None:
    with atomic_file(path) as handle:
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "curve": curve}, handle
        )


def _write_curve(path: Path, curve: list[list[float]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("step", "loss", "lr", "logit_scale"))
    for step, loss, lr, scale in curve:
        writer.writerow((int(step), f"{loss:.6f}", f"{lr:.8f}", f"{scale:.4f}"))
    with atomic_file(path, "w") as handle:
        handle.write(buffer.getvalue())


def pretrain_demo_clip(
    out_dir: str | Path,
    curve_path: str | Path,
    settings: dict[str, Any],
    domain: dict[str, Any],
    *,
    device: str | torch.device = "auto",
    scratch_root: str | Path = DEFAULT_SCRATCH,
) -> Path:
    """Train the demo CLIP and write `out_dir/{model.safetensors, model_cfg.json, provenance.json}`.

    Arguments:
      out_dir: the artifact directory (replaced atomically when training is done).
      curve_path: CSV of the loss, learning rate and logit scale per step (for `dvc plots`).
      settings: the `demo.clip` params section (model_cfg, scenes, closeups, steps, batch_size, lr, ...).
      domain: what the pretraining images look like: `min_objects`, `max_objects` (from demo.data).
      device: where to train ("auto": CUDA when present).
      scratch_root: where the resumable state lives between runs (removed when the artifact is written).
    """
    from safetensors.torch import save_file

    from wsss_core.models.clip import load_clip

    cfg = settings["model_cfg"]
    image_size = _check_settings(settings)
    import open_clip  # after load_clip's module has made torchvision importable

    clip = load_clip("demo-clip", model_cfg=cfg, random_init=True, seed=settings["seed"], device=device)
    model = clip.model.train().requires_grad_(True)
    model.logit_scale.requires_grad_(False)  # follows the temperature schedule instead
    model.token_embedding = CaptionVocabularyEmbedding(
        model.token_embedding, caption_vocabulary(clip.tokenizer, SYNTHETIC_CLASSES)
    )
    optimizer = torch.optim.AdamW(
        _parameter_groups(model, settings["weight_decay"]), lr=settings["lr"], betas=(0.9, 0.98), eps=1e-6
    )
    hold_lock(artifact_lock_file(out_dir, scratch_root), str(out_dir))
    state_path = _state_path(settings, domain, Path(scratch_root))
    start, curve = 0, []
    if state_path.is_file():
        state = torch.load(state_path, map_location=clip.device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, curve = state["step"], state["curve"]

    data = build_pretraining_set(
        settings["scenes"],
        settings["closeups"],
        image_size,
        settings["seed"],
        domain["min_objects"],
        domain["max_objects"],
    )
    mean = torch.tensor(clip.mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.std).view(1, 3, 1, 1)
    pixels = torch.from_numpy(data.images).permute(0, 3, 1, 2)  # uint8; normalised per batch, as prepare_image does
    loss_function = open_clip.ClipLoss()
    tokens = CaptionTokens(clip.tokenizer)
    steps, scale_start = settings["steps"], settings["logit_scale_start"]
    for step in progress(range(start, steps), "demo_clip", total=steps - start, unit="step"):
        rng = np.random.default_rng([settings["seed"], step])
        batch = draw_batch(rng, data, settings["batch_size"], settings["closeup_fraction"])
        images = augment((pixels[batch].float() / 255 - mean) / std, rng).to(clip.device)
        texts = tokens([caption(data.labels[i], SYNTHETIC_CLASSES, rng) for i in batch]).to(clip.device)
        lr = learning_rate(step, steps, settings["lr"], settings["warmup_steps"])
        scale = logit_scale(step, steps, scale_start, MAX_LOGIT_SCALE)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.no_grad():
            model.logit_scale.fill_(math.log(scale))
        loss = contrastive_loss(clip, images, texts, loss_function)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.token_embedding.decay(1 - lr * settings["weight_decay"])  # AdamW's factor, computed as AdamW does
        curve.append([step, loss.item(), lr, scale])
        if (step + 1) % settings["checkpoint_every"] == 0 and step + 1 < steps:
            _save_state(state_path, model, optimizer, step + 1, curve)

    _write_curve(Path(curve_path), curve)
    model.token_embedding = model.token_embedding.merged()
    weights = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    provenance = make_provenance(
        "demo_clip",
        {"demo.clip": settings, "demo.data": domain},
        libraries=("open_clip_torch", "safetensors"),
        details={
            "arch": "demo-clip",
            "pretraining_images": {"scenes": settings["scenes"], "closeups": settings["closeups"]},
            "image_size": list(image_size),
            "parameters": int(sum(tensor.numel() for tensor in weights.values())),
            "final_loss": round(float(np.mean([row[1] for row in curve[-50:]])), 6) if curve else None,
            "labels": "image-level only (captions name the classes drawn); no mask is used",
        },
    )
    with sealed_directory(out_dir) as tmp:
        save_file(weights, str(tmp / "model.safetensors"))
        (tmp / "model.safetensors").chmod(0o644)  # safetensors writes 0600; teammates share artifacts
        (tmp / "model_cfg.json").write_text(json.dumps(cfg, sort_keys=True, indent=1) + "\n")
        (tmp / "provenance.json").write_text(dumps(provenance))
    state_path.unlink(missing_ok=True)
    if state_path.parent.is_dir() and not any(state_path.parent.iterdir()):
        state_path.parent.rmdir()
    release_lock(artifact_lock_file(out_dir, scratch_root))
    return Path(out_dir)
