"""The `weaktr` CAM network: run settings with the reference's defaults (hustvl/WeakTr main.py and docs/Training.md,
VOC), how the network is built and its backbone loaded, `fit` (weaktr_training.py) and its CAMs (weaktr_cams.py).

Defaults are WeakTr's VOC training command: DeiT-S/16, AAF with reduction 8 and max pooling, AdamW lr 6e-4 scaled
by batch / 512, weight decay 0.03, batch 64, 60 epochs with 5 of warm-up from 1e-6, cosine to 1e-5, drop path 0.1,
timm's ImageNet training transform (random resized crop 224, flip, RandAugment rand-m9-mstd0.5-inc1, random erasing
0.25), AMP. COCO's command differs in lr (2e-4) and CAM scales (1.0, 0.8, 1.2): presets/weaktr_coco.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsss_core.models import IMAGENET_MEAN, IMAGENET_STD
from wsss_core.params.spec import Schema, Spec

# Imported by params (schema) before a stage may pin the CPU's float code paths: torch only inside functions.

LOSS_COLUMNS = ("loss", "token_loss", "coarse_loss", "fine_loss")  # of the curve: the sum and its three terms
BACKBONE_SOURCE = "the DeiT release, e.g. https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth"

SETTINGS: Schema = {
    "backbone": {
        "arch": Spec(str, "deit_small_patch16_224", "timm ViT architecture (its config; no weights are fetched)"),
        "overrides": Spec(
            dict, None, "timm config overrides, e.g. {embed_dim, depth, num_heads, img_size, patch_size}", nullable=True
        ),
        # Required, like every key dvc.yaml interpolates: DVC reads the file, not these defaults.
        "checkpoint": Spec(
            str, None, "local weights: a DeiT/timm ViT state dict (`wsss weights fetch`) or an open_clip CLIP file"
        ),
        "sha256": Spec(str, None, "expected sha256 of the checkpoint", nullable=True),
        "mean": Spec(
            list, list(IMAGENET_MEAN), "input normalisation mean (RGB, 0-1)", item=float, length=3, min=0.0, max=1.0
        ),
        "std": Spec(list, list(IMAGENET_STD), "input normalisation std", item=float, length=3, min=1e-6),
    },
    "reduction": Spec(float, 8.0, "AAF's reduction r across the depth x heads maps (WeakTr trains with 8)", min=1.0),
    "feat_reduction": Spec(int, 8, "AAF's reduction of a head's features", min=1),
    "pool": Spec(str, "max", "AAF's pooling of a map's features over tokens", choices=("avg", "max")),
    "drop_path": Spec(float, 0.1, "stochastic depth of the last block (linear from 0)", min=0.0, max=1.0),
    "seed": Spec(int, 0, "seed of the new layers, the image order, augmentation and drop path", min=0),
    "amp": Spec(bool, True, "fp16 autocast and loss scaling on CUDA (the reference trains with AMP)"),
    "epochs": Spec(int, 60, "training epochs (the reference keeps its best epoch by GT mIoU, this the last)", min=1),
    "batch_size": Spec(int, 64, "images per update; an epoch drops the last incomplete batch", min=1),
    "lr": Spec(float, 6e-4, "AdamW base learning rate before the batch / 512 scaling", min=0.0),
    "weight_decay": Spec(float, 0.03, "AdamW weight decay, on every parameter as the reference passes them", min=0.0),
    "warmup_epochs": Spec(int, 5, "epochs of linear warm-up from warmup_lr", min=0),
    "warmup_lr": Spec(float, 1e-6, "first learning rate of the warm-up", min=0.0),
    "min_lr": Spec(float, 1e-5, "floor of the cosine schedule", min=0.0),
    "augment": {
        "input_size": Spec(int, 224, "side of the random resized crop", min=16),
        "crop_scale": Spec(
            list,
            [0.08, 1.0],
            "area range of the random resized crop, as a share of the image",
            item=float,
            length=2,
            min=0.01,
            max=1.0,
        ),
        "auto_augment": Spec(
            str, "rand-m9-mstd0.5-inc1", "timm auto-augment policy (null: colour jitter instead)", nullable=True
        ),
        "color_jitter": Spec(float, 0.4, "colour jitter, used only without auto_augment (timm's rule)", min=0.0),
        "random_erasing": Spec(float, 0.25, "random-erasing probability (pixel mode)", min=0.0, max=1.0),
        "interpolation": Spec(str, "bicubic", "crop resampling", choices=("bicubic", "bilinear", "random")),
    },
}

CAM_SETTINGS: Schema = {
    "scales": Spec(
        list,
        [1.0, 1.2],
        "image scales (each with its mirror image) whose CAMs are summed",
        item=float,
        min=0.1,
        max=4.0,
    ),
    "patch_refine": Spec(bool, True, "propagate the CAMs through the fused patch affinity (PA @ CAM)"),
    "amp": Spec(bool, True, "fp16 autocast on CUDA (as the reference's CAM generation)"),
}


@dataclass(frozen=True)
class Built:
    network: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]
    checkpoints: dict[str, Any]


def build_vit(backbone: dict[str, Any], drop_path: float):
    """The timm ViT the network takes its patch embedding and blocks from (no weights loaded)."""
    from wsss_core.segment.weaktr_decoder import build_vit_encoder

    return build_vit_encoder(backbone["arch"], backbone["overrides"], drop_path)


def build_network(run: dict[str, Any], num_classes: int, *, pretrained: bool) -> Built:
    """The network of a run, seeded; with `pretrained`, its backbone loaded from the run's checkpoint (without, as
    the CAM stage rebuilds it before filling in the trained weights)."""
    import torch

    from wsss_core.camnet.weaktr_network import WeakTrNetwork

    backbone = run["backbone"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run["seed"])
        vit = build_vit(backbone, run["drop_path"])
        network = WeakTrNetwork(
            vit, num_classes, reduction=run["reduction"], feat_reduction=run["feat_reduction"], pool=run["pool"]
        )
    checkpoints = {}
    if pretrained:
        checkpoints["vit"] = load_backbone(network, vit, backbone["checkpoint"], backbone["sha256"])
    return Built(network, tuple(backbone["mean"]), tuple(backbone["std"]), checkpoints)


def load_backbone(network, vit, path: str | Path, sha256: str | None) -> dict[str, Any]:
    """Fill the network's backbone from a DeiT/timm ViT state dict ({"model": ...} as DeiT ships it) or an open_clip
    CLIP file (timm converts its vision tower); the CLS token is copied per class, as the reference loads DeiT. The
    head and AAF stay newly initialised; any other missing or unexpected key is an error."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    from wsss_core.camnet.weaktr_network import expand_class_tokens
    from wsss_core.models.checkpoints import CheckpointError, load_state_dict

    state, ref = load_state_dict(path, sha256, BACKBONE_SOURCE)
    try:
        state = expand_class_tokens(checkpoint_filter_fn(state, vit), network.num_classes)
    except (KeyError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path}: not a ViT or CLIP state dict ({error})") from error
    missing, unexpected = network.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.startswith(("head.", "aaf."))]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path}: does not fit the {type(vit).__name__} backbone (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    return ref.as_dict()


def fit(run: dict[str, Any], dataset, *, device, work_dir: Path, checkpoint_every: int, on_step=None):
    """Train a run on `dataset` (an index); returns (Built with the trained network, curve)."""
    from wsss_core.camnet.weaktr_training import TrainingData, train

    built = build_network(run, dataset.num_classes - 1, pretrained=True)
    curve = train(
        built.network,
        TrainingData(dataset),
        run,
        mean=built.mean,
        std=built.std,
        device=device,
        work_dir=work_dir,
        checkpoint_every=checkpoint_every,
        on_step=on_step,
    )
    return built, curve


def cam_generator(built: Built, settings: dict[str, Any], device):
    """The CAMs of a trained network with a `cam_nets.cams` entry's settings (weaktr_cams.py)."""
    from wsss_core.camnet.weaktr_cams import WeakTrCams

    return WeakTrCams(
        built.network,
        built.mean,
        built.std,
        scales=settings["scales"],
        patch_refine=settings["patch_refine"],
        amp=settings["amp"],
        device=device,
    )
