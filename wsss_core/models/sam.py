"""Segment Anything (SAM): the official ViT-H/L/B from a verified checkpoint, or a small model of the same classes.

segment-anything's own builders load weights with a bare `torch.load`, which unpickles whatever the file holds.
Here the architecture is built empty and the weights come through `checkpoints.load_state_dict` (weights_only or
safetensors, sha256 checked) and are loaded strictly, so every parameter must be in the file and nothing else may be.

Random weights exist only through `build_sam_from_config` without a checkpoint, seeded; tests and demos use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from wsss_core.models import resolve_device
from wsss_core.models.checkpoints import CheckpointError, CheckpointRef, load_state_dict
from wsss_core.models.compat import ensure_torchvision

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

# The checkpoints named in the segment-anything README, with the sha256 of the files published there.
OFFICIAL_CHECKPOINTS: dict[str, dict[str, str]] = {
    "vit_h": {
        "file": "sam_vit_h_4b8939.pth",
        "url": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "sha256": "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    },
    "vit_l": {
        "file": "sam_vit_l_0b3195.pth",
        "url": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "sha256": "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    },
    "vit_b": {
        "file": "sam_vit_b_01ec64.pth",
        "url": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "sha256": "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    },
}
SAM_MODEL_TYPES = tuple(OFFICIAL_CHECKPOINTS)


@dataclass
class SamHandle:
    """A SAM model in eval mode on its device, with what produced its weights.

    Arguments:
      sam: the segment-anything `Sam` module; pass it to `SamPredictor` or `SamAutomaticMaskGenerator`.
      model_type: "vit_h", "vit_l", "vit_b", or "custom" for `build_sam_from_config`.
      provenance: {"model_type", "checkpoint": {"path", "sha256"}} (custom models add "config", and
        "random_init": {"seed"} in place of "checkpoint" when no file was loaded).
      device: where `sam` lives.
    """

    sam: Sam
    model_type: str
    provenance: dict[str, Any]
    device: torch.device


def build_sam(
    model_type: str, checkpoint: str | Path, *, sha256: str | None = None, device: torch.device | str = "auto"
) -> SamHandle:
    """Build the official SAM `model_type` ("vit_h", "vit_l", "vit_b") with the weights in `checkpoint`.

    The file is read and checked before the model is built, so a missing or wrong file fails without
    allocating a multi-GB model. `sha256` pins the file; without it, a file carrying an official name
    (e.g. sam_vit_h_4b8939.pth) must match the official hash, which catches truncated downloads.
    """
    if model_type not in OFFICIAL_CHECKPOINTS:
        raise ValueError(f"unknown SAM model_type {model_type!r}; choose one of {', '.join(SAM_MODEL_TYPES)}")
    device = resolve_device(device)
    official = OFFICIAL_CHECKPOINTS[model_type]
    source_hint = f"{official['url']} (the segment-anything README's {model_type} checkpoint, {official['file']})"
    state, ref = load_state_dict(checkpoint, sha256, source_hint)
    if sha256 is None and Path(checkpoint).name == official["file"] and ref.sha256 != official["sha256"]:
        raise CheckpointError(
            f"checkpoint {ref.path}: sha256 is {ref.sha256}, but the official {official['file']} ({official['url']}) "
            f"has {official['sha256']}; the download may be incomplete. Pass sha256= to use another file of this name."
        )

    ensure_torchvision()
    from segment_anything import sam_model_registry

    sam = sam_model_registry[model_type](checkpoint=None)
    _load_strictly(sam, state, ref)
    return SamHandle(
        sam=sam.to(device).eval(),
        model_type=model_type,
        provenance={"model_type": model_type, "checkpoint": ref.as_dict()},
        device=device,
    )


def build_sam_from_config(
    encoder_embed_dim: int,
    encoder_depth: int,
    encoder_num_heads: int,
    encoder_global_attn_indexes: tuple[int, ...] | list[int],
    *,
    image_size: int = 1024,
    vit_patch_size: int = 16,
    window_size: int = 14,
    prompt_embed_dim: int = 256,
    mask_in_chans: int = 16,
    decoder_depth: int = 2,
    decoder_mlp_dim: int = 2048,
    decoder_num_heads: int = 8,
    iou_head_hidden_dim: int = 256,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    sha256: str | None = None,
    device: torch.device | str = "auto",
) -> SamHandle:
    """Build segment-anything's `Sam` with chosen sizes; the defaults are the official ones.

    Without `checkpoint` the weights are random, drawn from `seed` on the CPU (the global RNG is left
    as it was), so the same seed gives the same model on every device. With `checkpoint` the weights
    are loaded strictly from the file, as in `build_sam`.

    A small consistent model for tests: image_size 64, vit_patch_size 16 (a 4x4 embedding grid),
    window_size 2, prompt_embed_dim 32, mask_in_chans 8, decoder_depth 1, decoder_mlp_dim 64,
    decoder_num_heads 2, iou_head_hidden_dim 32.
    """
    config = {
        "encoder_embed_dim": encoder_embed_dim,
        "encoder_depth": encoder_depth,
        "encoder_num_heads": encoder_num_heads,
        "encoder_global_attn_indexes": [int(index) for index in encoder_global_attn_indexes],
        "image_size": image_size,
        "vit_patch_size": vit_patch_size,
        "window_size": window_size,
        "prompt_embed_dim": prompt_embed_dim,
        "mask_in_chans": mask_in_chans,
        "decoder_depth": decoder_depth,
        "decoder_mlp_dim": decoder_mlp_dim,
        "decoder_num_heads": decoder_num_heads,
        "iou_head_hidden_dim": iou_head_hidden_dim,
    }
    _check_config(config)
    device = resolve_device(device)
    state, ref = load_state_dict(checkpoint, sha256) if checkpoint is not None else (None, None)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = _assemble(config)
    provenance: dict[str, Any] = {"model_type": "custom", "config": config}
    if state is None:
        provenance["random_init"] = {"seed": seed}
    else:
        _load_strictly(sam, state, ref)
        provenance["checkpoint"] = ref.as_dict()
    return SamHandle(sam=sam.to(device).eval(), model_type="custom", provenance=provenance, device=device)


def _check_config(config: dict[str, Any]) -> None:
    """Reject sizes that would build a model whose parts do not fit together."""
    rules = [
        ("image_size", config["image_size"] % config["vit_patch_size"] == 0, "a multiple of vit_patch_size"),
        ("encoder_embed_dim", config["encoder_embed_dim"] % config["encoder_num_heads"] == 0,
         "a multiple of encoder_num_heads"),
        # The mask decoder upsamples to prompt_embed_dim // 8 channels, and its cross-attention halves the width
        # before splitting it into heads.
        ("prompt_embed_dim", config["prompt_embed_dim"] % 8 == 0, "a multiple of 8"),
        ("prompt_embed_dim", (config["prompt_embed_dim"] // 2) % config["decoder_num_heads"] == 0,
         "such that prompt_embed_dim // 2 is a multiple of decoder_num_heads"),
        ("mask_in_chans", config["mask_in_chans"] % 4 == 0, "a multiple of 4"),
        ("encoder_global_attn_indexes",
         all(0 <= index < config["encoder_depth"] for index in config["encoder_global_attn_indexes"]),
         "indexes of encoder blocks (0 .. encoder_depth - 1)"),
    ]  # fmt: skip
    for name, holds, requirement in rules:
        if not holds:
            raise ValueError(f"SAM config: {name}={config[name]!r} must be {requirement} (config {config})")


def _assemble(config: dict[str, Any]) -> Sam:
    """The official `_build_sam` wiring, with its fixed sizes made arguments."""
    ensure_torchvision()
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    image_size, embed_dim = config["image_size"], config["prompt_embed_dim"]
    grid = image_size // config["vit_patch_size"]
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=config["encoder_depth"],
            embed_dim=config["encoder_embed_dim"],
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=config["encoder_num_heads"],
            patch_size=config["vit_patch_size"],
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(config["encoder_global_attn_indexes"]),
            window_size=config["window_size"],
            out_chans=embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=config["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=config["decoder_depth"],
                embedding_dim=embed_dim,
                mlp_dim=config["decoder_mlp_dim"],
                num_heads=config["decoder_num_heads"],
            ),
            transformer_dim=embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=config["iou_head_hidden_dim"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def _load_strictly(sam: Sam, state: dict[str, Any], ref: CheckpointRef) -> None:
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as error:  # torch lists the missing, unexpected and mis-shaped keys
        raise CheckpointError(f"checkpoint {ref.path}: does not fit this SAM architecture: {error}") from error
