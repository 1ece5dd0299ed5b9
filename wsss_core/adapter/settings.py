"""Run settings every adapter-learning method shares: the training loop's (training.py) and the WeCLIP head's, each
method giving its reference's defaults where they differ. A schema module: no torch here, params load it."""

from __future__ import annotations

from typing import Any

from wsss_core.params.spec import Schema, Spec


def loop_settings(*, iterations: int, lr: float, iterations_help: str, lr_help: str) -> Schema:
    """The loop's keys: schedule, optimiser, augmentation, the seg and diversity losses (their reference values are
    ExCEL's and DiCLIP's alike but the length and the rate)."""
    return {
        "iterations": Spec(int, iterations, iterations_help, min=1),
        "batch_size": Spec(int, 4, "images per iteration", min=1),
        "crop_size": Spec(
            int, 320, "square training crop, a multiple of the patch size (320: a 20x20 token grid)", min=1
        ),
        "scale_range": Spec(
            list, [0.5, 2.0], "random rescale before cropping", item=float, length=2, min=0.05, max=8.0
        ),
        "flip": Spec(bool, True, "random horizontal flips"),
        "lr": Spec(float, lr, lr_help, min=0.0),
        "weight_decay": Spec(float, 0.01, "AdamW weight decay", min=0.0),
        "warmup_iterations": Spec(int, 50, "linear warm-up iterations (COCO 200)", min=0),
        "warmup_ratio": Spec(float, 1e-6, "lr multiplier at the first warm-up iteration", min=0.0, max=1.0),
        "poly_power": Spec(float, 1.0, "poly decay power after warm-up", min=0.0),
        "seg_weight": Spec(float, 1.0, "weight of the segmentation loss", min=0.0),
        "diversity_weight": Spec(float, 0.1, "weight of the diversity loss (ExCEL's eq. 11)", min=0.0),
        "radius": Spec(int, 8, "diversity loss: token pairs at most this many rows and columns apart", min=0),
    }


def head_settings(reference_tokens_help: str) -> Schema:
    """The WeCLIP head's keys; `reference_tokens_help` says what the method's in-place dual path feeds it."""
    return {
        "embedding_dim": Spec(int, 256, "WeCLIP head: width of the fused features and transformer layers", min=8),
        "transformer_layers": Spec(int, 3, "WeCLIP head: pre-LN transformer layers", min=0),
        "heads": Spec(int, 8, "WeCLIP head: attention heads", min=1),
        "dropout": Spec(float, 0.1, "WeCLIP head: Dropout2d after the fusion conv (also on F_d)", min=0.0, max=1.0),
        "head_tokens": Spec(
            str,
            "reference",
            f"what the head reads per block: reference ({reference_tokens_help}) | original (every block's own "
            "output, as WeCLIP)",
            choices=("reference", "original"),
        ),
    }


RUN_END: Schema = {
    "amp": Spec(bool, True, "fp16 autocast and loss scaling on CUDA only"),
    "seed": Spec(int, 0, "seed of the initial weights, image order, augmentation and dropout", min=0),
}

# The loop's keys `AdaptSettings` takes as they are (training.py)
LOOP_KEYS = (
    *("iterations", "batch_size", "crop_size", "flip", "lr", "adapter_lr_scale", "decoder_lr_scale"),
    *("weight_decay", "warmup_iterations", "warmup_ratio", "poly_power", "amp", "seed"),
)


def check_run(run: dict[str, Any], key: str, *, patch_size: int, blocks: int, layer_keys: tuple[str, ...]) -> None:
    """Cross-key checks the schema cannot express, named by their key: the crop on the patch grid, the `layer_keys`
    within the CLIP's blocks, the scale range, the head's width over its heads."""
    from wsss_core.params import ParamsError

    if run["crop_size"] % patch_size:
        raise ParamsError(f"{key}.crop_size: {run['crop_size']} is not a multiple of the patch size {patch_size}")
    for name in layer_keys:
        if run[name] > blocks:
            raise ParamsError(f"{key}.{name}: {run[name]} exceeds the {blocks} blocks of this CLIP")
    low, high = run["scale_range"]
    if low > high:
        raise ParamsError(f"{key}.scale_range: {[low, high]} is not [low, high]")
    if run["embedding_dim"] % run["heads"]:
        raise ParamsError(f"{key}.embedding_dim: {run['embedding_dim']} is not divisible by heads ({run['heads']})")
