"""Models built from their params sections, so every stage loads the same file the same way."""

from __future__ import annotations

from typing import Any

from wsss_core.models.clip import ClipModel, load_clip


def clip_from_params(settings: dict[str, Any], device: str) -> ClipModel:
    """The CLIP of a `models.clip` params section, on `device` (auto: CUDA when present)."""
    return load_clip(
        settings["arch"],
        pretrained=settings["pretrained"],
        checkpoint=settings["checkpoint"],
        sha256=settings["sha256"],
        model_cfg=settings["model_cfg"],
        random_init=settings["random_init"],
        seed=settings["seed"],
        device=device,
    )
