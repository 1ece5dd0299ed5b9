"""CLIP as every method here uses it: open_clip's model, loaded from a verified file, run block by block.

Loading (`load_clip`) builds open_clip's own `CLIP` class and fills it from a pretrained tag (open_clip's download and
cache), a local checkpoint (sha256 recorded, `weights_only`), or deliberately random weights for tests and demos.

Running it: the visual side in `clip_visual`, the text side in `clip_text`.
"""

from __future__ import annotations

import copy
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from wsss_core.models import resolve_device
from wsss_core.models.checkpoints import CheckpointError, CheckpointRef, load_state_dict, verify_checkpoint
from wsss_core.models.compat import import_open_clip
from wsss_core.models.torchscript_archive import read_torchscript_tensors

import_open_clip()  # torchvision made importable on CPU-only machines, transformers left out
import open_clip  # noqa: E402

# Entries of OpenAI's original checkpoints that are metadata, not weights; open_clip drops them the same way.
# `attn_mask` is a non-persistent buffer in open_clip but appears in TorchScript archives.
_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
_OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclass
class ClipModel:
    """A loaded CLIP: open_clip's model (eval mode, frozen, on `device`) with what callers need beside it."""

    model: open_clip.CLIP
    tokenizer: Callable
    arch: str
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    provenance: dict
    device: torch.device


# --------------------------------------------------------------------------------------------------------- loading


def load_clip(
    arch: str | None = None,
    *,
    pretrained: str | None = "openai",
    checkpoint: str | Path | None = None,
    sha256: str | None = None,
    model_cfg: dict | None = None,
    device: str | torch.device = "auto",
    random_init: bool = False,
    quick_gelu: bool | None = None,
    seed: int = 0,
) -> ClipModel:
    """Build open_clip's CLIP `arch` (or the custom `model_cfg`) and load its weights.

    Weights come from exactly one source:
    - `checkpoint`: a local file (open_clip state dict, OpenAI's state dict, or OpenAI's TorchScript release), checked
      against `sha256` when given and loaded strictly. For a named `arch`, `pretrained` then says which published
      weights the file holds (it sets QuickGELU and is recorded); pass `pretrained=None` for anything else.
    - `pretrained` tag alone: open_clip downloads the weights into its cache (needs network once).
    - `random_init=True`: random weights drawn with `seed`, only when asked for (tests, demos).
    `arch` defaults to "ViT-B-16". `model_cfg` is an open_clip model config (embed_dim, vision_cfg, text_cfg) for a
    custom architecture of the same classes; `arch` then only labels it (default "custom") and `pretrained` does not
    apply. `quick_gelu=None` picks the activation the weights were trained with (OpenAI weights: QuickGELU).
    """
    device = resolve_device(device)
    if model_cfg is not None:
        arch = arch or "custom"
        missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in model_cfg]
        if missing:
            raise ValueError(f"model_cfg for {arch!r} lacks {missing}; it needs embed_dim, vision_cfg and text_cfg")
        cfg, tag = copy.deepcopy(dict(model_cfg)), None
    else:
        arch = arch or "ViT-B-16"
        cfg = open_clip.get_model_config(arch)
        if cfg is None:
            raise ValueError(f"unknown open_clip architecture {arch!r}; pass model_cfg for a custom one")
        tag = None if random_init else pretrained
    tag_cfg = _pretrained_cfg(arch, tag) if tag else {}

    if random_init and checkpoint is not None:
        raise ValueError(f"random_init=True and checkpoint={str(checkpoint)!r} contradict each other: choose one")
    if random_init:
        state, ref, openai_format = None, None, False
    else:
        if checkpoint is None and tag is None:
            raise ValueError(
                f"no weights for {arch!r}: pass checkpoint=<path>, a pretrained tag for a named architecture, "
                "or random_init=True to build random weights on purpose"
            )
        weights_file = Path(checkpoint) if checkpoint is not None else _download_pretrained(arch, tag, tag_cfg)
        state, ref, openai_format = read_clip_state_dict(weights_file, sha256, source_hint=_source_hint(tag_cfg))

    if quick_gelu is None:
        quick_gelu = bool(tag_cfg.get("quick_gelu") or openai_format or cfg.get("quick_gelu", False))
    cfg["quick_gelu"] = quick_gelu
    model = _build_clip(cfg, seed)
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise CheckpointError(f"checkpoint {ref.path} does not fit architecture {arch!r}: {error}") from error

    model = model.to(device).eval().requires_grad_(False)
    patch_height, patch_width = model.visual.patch_size
    if patch_height != patch_width:
        raise ValueError(f"{arch}: only square patches are supported, got {model.visual.patch_size}")
    provenance = {
        "arch": arch,
        "pretrained": tag,
        "checkpoint": ref.as_dict() if ref is not None else None,
        "quick_gelu": quick_gelu,
        "random_init": random_init,
    }
    if random_init:
        provenance["seed"] = seed
    if model_cfg is not None:
        provenance["model_cfg"] = cfg
    return ClipModel(
        model=model,
        tokenizer=_tokenizer_for(arch, cfg, custom=model_cfg is not None),
        arch=arch,
        patch_size=patch_height,
        mean=tuple(tag_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(tag_cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        provenance=provenance,
        device=device,
    )


def read_clip_state_dict(
    path: str | Path, expected_sha256: str | None = None, source_hint: str = ""
) -> tuple[dict[str, torch.Tensor], CheckpointRef, bool]:
    """Read CLIP weights from a file; return (state dict in open_clip's key names, file reference, is OpenAI format).

    OpenAI's ViT-B-16.pt is a TorchScript archive, which `torch.load(weights_only=True)` refuses and `torch.jit.load`
    would run (its code executes on load, e.g. a class's `__setstate__`). Its weights are read as data instead, after
    the file's sha256 was checked, by `read_torchscript_tensors`: no code of the archive is compiled or run, and an
    archive that needs more than tensors and module attributes to read is refused with `CheckpointError`.
    """
    path = Path(path)
    if _is_torchscript_archive(path):
        ref = verify_checkpoint(path, expected_sha256, source_hint)
        state = read_torchscript_tensors(path)
        openai_format = True
    else:
        state, ref = load_state_dict(path, expected_sha256, source_hint)
        openai_format = any(key in state for key in _OPENAI_METADATA_KEYS)
    state = {key.removeprefix("module."): value for key, value in state.items()}
    for key in _NON_WEIGHT_KEYS:
        state.pop(key, None)
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint {path}: entry {key!r} is a {type(value).__name__}, not a tensor")
    return state, ref, openai_format


def _is_torchscript_archive(path: Path) -> bool:
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def _pretrained_cfg(arch: str, tag: str) -> dict:
    tag_cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not tag_cfg:
        known = open_clip.list_pretrained_tags_by_model(arch)
        raise ValueError(f"open_clip has no pretrained tag {tag!r} for {arch!r}; known tags: {known}")
    return tag_cfg


def _source_hint(tag_cfg: dict) -> str:
    sources = []
    if tag_cfg.get("url"):
        sources.append(tag_cfg["url"])
    if tag_cfg.get("hf_hub"):
        sources.append("https://huggingface.co/" + tag_cfg["hf_hub"].rstrip("/"))
    return " or ".join(sources) or "a state dict saved from this architecture (torch.save or safetensors)"


def _download_pretrained(arch: str, tag: str, tag_cfg: dict) -> Path:
    try:
        weights_file = open_clip.pretrained.download_pretrained(tag_cfg)
    except Exception as error:  # network, hub and file errors all mean the same thing to the caller
        weights_file, reason = "", f"{type(error).__name__}: {error}"
    else:
        reason = "open_clip returned no file"
    if not weights_file:
        raise CheckpointError(
            f"pretrained weights {arch}/{tag} cannot be downloaded ({reason}). Without network, pass a local "
            f"checkpoint path instead: load_clip(..., checkpoint=<file>, sha256=<digest>). "
            f"The weights come from: {_source_hint(tag_cfg)}"
        )
    return Path(weights_file)


def _build_clip(cfg: dict, seed: int) -> open_clip.CLIP:
    unsupported = [key for key in ("custom_text", "multimodal_cfg") if cfg.get(key)]
    unsupported += [f"vision_cfg.{key}" for key in ("timm_model_name",) if cfg["vision_cfg"].get(key)]
    unsupported += [f"text_cfg.{key}" for key in ("hf_model_name",) if cfg["text_cfg"].get(key)]
    if isinstance(cfg["vision_cfg"].get("layers"), (list, tuple)):
        unsupported.append("vision_cfg.layers (a ResNet)")
    if unsupported:
        raise ValueError(f"model config needs a model other than open_clip's ViT CLIP: {unsupported}")
    vocab_size = cfg["text_cfg"].get("vocab_size", 49408)
    if vocab_size < 49408:
        raise ValueError(f"text_cfg.vocab_size {vocab_size} is smaller than the CLIP tokenizer's 49408 tokens")
    # Fixed seed so that even random weights are reproducible; the global RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return open_clip.CLIP(**cfg)
        except TypeError as error:
            raise ValueError(f"model config {cfg}: {error}") from error


def _tokenizer_for(arch: str, cfg: dict, *, custom: bool) -> Callable:
    if custom:
        return open_clip.SimpleTokenizer(context_length=cfg["text_cfg"].get("context_length", 77))
    return open_clip.get_tokenizer(arch)
