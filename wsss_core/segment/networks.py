"""The segmentation networks the retrain stage can train, each built from its params section, the
`retrain.runs.<run>.<network>` of a retrain run.

Every network is an `nn.Module` mapping normalised images (B, 3, H, W) to class logits (B, K, H, W) for any H, W,
with a `parameter_groups()` method that splits pretrained backbone parameters from new head parameters (they get
different learning rates). `build_network` returns it with the normalisation its backbone expects and the
provenance of any pretrained weights it loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from wsss_core.models import IMAGENET_MEAN, IMAGENET_STD, resolve_device
from wsss_core.models.checkpoints import CheckpointError


@dataclass
class Network:
    """A network ready to train or run: the module (on its device), its input normalisation, its weight sources."""

    module: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    checkpoints: dict[str, Any] = field(default_factory=dict)


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    # New layers are drawn from a fixed seed without disturbing the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _pretrained_checkpoint(key: str, settings: dict[str, Any], pretrained: bool) -> str | None:
    """The backbone weights file to load, None for random weights; refuses to go random unless asked to. `key` is
    the params key of the network's section, for messages."""
    if not pretrained:
        return None  # the trained weights are loaded over everything afterwards
    if settings["random_init"]:
        if settings["checkpoint"] is not None:
            raise CheckpointError(
                f"{key}: random_init is true but checkpoint is {settings['checkpoint']!r}; choose one"
            )
        return None
    if settings["checkpoint"] is None:
        raise CheckpointError(
            f"{key}.checkpoint: no pretrained backbone weights given; set a local file (and its sha256), "
            "or random_init: true to train from random weights on purpose"
        )
    return settings["checkpoint"]


def _build_weclip_head(settings, num_classes, clip, device, pretrained, seed, key) -> Network:
    from wsss_core.segment.weclip_head import WeClipSegmenter

    if clip is None:
        raise ValueError("the WeCLIP head needs a loaded CLIP (models.clip)")
    module = _seeded(
        seed,
        lambda: WeClipSegmenter(
            clip,
            num_classes,
            feature_layers=settings["feature_layers"],
            embedding_dim=settings["embedding_dim"],
            transformer_layers=settings["transformer_layers"],
            heads=settings["heads"],
            dropout=settings["dropout"],
        ),
    )
    return Network(module.to(device), tuple(clip.mean), tuple(clip.std), {"clip": clip.provenance})


def _build_deeplabv3plus(settings, num_classes, clip, device, pretrained, seed, key) -> Network:
    from wsss_core.segment.deeplabv3plus import DeepLabV3Plus, load_resnet_weights

    module = _seeded(seed, lambda: DeepLabV3Plus(num_classes, settings["blocks"], settings["output_stride"]))
    checkpoint = _pretrained_checkpoint(key, settings, pretrained)
    checkpoints = {}
    if checkpoint is not None:
        checkpoints["resnet"] = load_resnet_weights(module.backbone, checkpoint, settings["sha256"]).as_dict()
    return Network(module.to(device), IMAGENET_MEAN, IMAGENET_STD, checkpoints)


def _build_weaktr(settings, num_classes, clip, device, pretrained, seed, key) -> Network:
    from wsss_core.segment.weaktr_decoder import WeakTrSegmenter, build_vit_encoder, load_vit_weights

    def build() -> nn.Module:
        encoder = build_vit_encoder(settings["encoder"], settings["encoder_cfg"], settings["drop_path_rate"])
        return WeakTrSegmenter(encoder, num_classes, settings["decoder_layers"], settings["dropout"])

    module = _seeded(seed, build)
    checkpoint = _pretrained_checkpoint(key, settings, pretrained)
    checkpoints = {}
    if checkpoint is not None:
        checkpoints["vit"] = load_vit_weights(module.encoder, checkpoint, settings["sha256"]).as_dict()
    config = module.encoder.pretrained_cfg or {}
    mean, std = tuple(config.get("mean", IMAGENET_MEAN)), tuple(config.get("std", IMAGENET_STD))
    return Network(module.to(device), mean, std, checkpoints)


# name -> builder(settings, num_classes, clip, device, pretrained, seed, key)
NETWORKS: dict[str, Callable[..., Network]] = {
    "weclip_head": _build_weclip_head,
    "deeplabv3plus": _build_deeplabv3plus,
    "weaktr": _build_weaktr,
}


def build_network(
    name: str,
    settings: dict[str, Any],
    num_classes: int,
    *,
    clip=None,
    device: str | torch.device = "auto",
    pretrained: bool = True,
    seed: int = 0,
    key: str | None = None,
) -> Network:
    """Build network `name` (a key of NETWORKS) from its params section `settings` (`key`, for messages; by default
    retrain.runs.<run>.<name> with the run left open).

    `clip` is the loaded CLIP for networks on frozen CLIP features. `pretrained=False` skips loading backbone
    weights (for rebuilding a trained network whose full weights are loaded next). `seed` fixes the new layers.
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; expected one of {', '.join(NETWORKS)}")
    if num_classes < 2:
        raise ValueError(f"a segmentation network needs at least 2 classes (background and one), got {num_classes}")
    key = key if key is not None else f"retrain.runs.<run>.{name}"
    return NETWORKS[name](settings, num_classes, clip, resolve_device(device), pretrained, seed, key)
