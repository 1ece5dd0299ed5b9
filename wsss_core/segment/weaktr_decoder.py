"""WeakTr's online-retraining network: a plain ViT encoder (timm) and the Segmenter mask-transformer decoder.

The decoder (WeakTr paper, section III-B, eq. 10) projects the encoder's patch tokens to its width, appends one
learned embedding per class, runs two transformer layers over both, and scores every patch against every class as the
dot product of their L2-normalised projections, followed by a LayerNorm over classes; the patch-grid logits are
upsampled bilinearly to the input size. Training pairs it with the gradient-clipping loss
(`wsss_core.segment.losses.gradient_clipping_loss`), which is where WeakTr differs from Segmenter.

The encoder is any timm VisionTransformer (DeiT-S/16 in WeakTr), built with a dynamic image size so inputs of any
multiple of the patch size work (others are padded and the logits cropped back).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss_core.models.checkpoints import CheckpointError, CheckpointRef, load_state_dict
from wsss_core.models.compat import ensure_torchvision

ensure_torchvision()  # timm imports torchvision
import timm  # noqa: E402
from timm.layers import trunc_normal_  # noqa: E402
from timm.models.vision_transformer import Block, VisionTransformer, checkpoint_filter_fn  # noqa: E402

VIT_SOURCE = "timm / DeiT releases, e.g. https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth"


def build_vit_encoder(
    name: str, overrides: dict[str, Any] | None = None, drop_path_rate: float = 0.1
) -> VisionTransformer:
    """timm's ViT `name` without a classifier and with a dynamic input size; `overrides` change its config
    (e.g. {"embed_dim": 32, "depth": 2, "num_heads": 2} for a tiny test model). No weights are loaded here."""
    try:
        encoder = timm.create_model(
            name,
            pretrained=False,
            num_classes=0,
            dynamic_img_size=True,
            drop_path_rate=drop_path_rate,
            **(overrides or {}),
        )
    except (RuntimeError, TypeError, ValueError) as error:  # unknown name or config keys
        raise ValueError(f"cannot build timm encoder {name!r} with {overrides or {}}: {error}") from error
    if not isinstance(encoder, VisionTransformer):
        raise ValueError(f"timm model {name!r} is a {type(encoder).__name__}, not a plain VisionTransformer")
    return encoder


def load_vit_weights(encoder: VisionTransformer, path: str | Path, sha256: str | None) -> CheckpointRef:
    """Fill the encoder from a local ViT/DeiT checkpoint (state dict, {"model": ...} or safetensors); the classifier
    head is dropped and the positional embedding resized by timm's own checkpoint filter."""
    state, ref = load_state_dict(path, sha256, VIT_SOURCE)
    if isinstance(state.get("model"), dict):  # DeiT releases wrap the weights
        state = state["model"]
    state = {key: value for key, value in state.items() if not key.startswith(("head.", "head_dist."))}
    state = checkpoint_filter_fn(state, encoder)
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {path}: does not fit the ViT encoder ({error})") from error
    return ref


class MaskTransformerDecoder(nn.Module):
    """Segmenter's mask transformer: patch tokens (B, N, D_enc) on an (h, w) grid -> class logits (B, K, h, w)."""

    def __init__(
        self, num_classes: int, encoder_dim: int, width: int, layers: int = 2, heads: int = 6, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.project_tokens = nn.Linear(encoder_dim, width)
        self.class_embeddings = nn.Parameter(torch.zeros(1, num_classes, width))
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_ratio=4.0, qkv_bias=True, proj_drop=dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(width)
        scale = width**-0.5
        self.project_patches = nn.Parameter(scale * torch.randn(width, width))
        self.project_classes = nn.Parameter(scale * torch.randn(width, width))
        self.mask_norm = nn.LayerNorm(num_classes)
        self.apply(_init_weights)
        trunc_normal_(self.class_embeddings, std=0.02)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.project_tokens(tokens)
        x = torch.cat([x, self.class_embeddings.expand(x.shape[0], -1, -1)], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        patches = F.normalize(x[:, : -self.num_classes] @ self.project_patches, dim=-1)
        classes = F.normalize(x[:, -self.num_classes :] @ self.project_classes, dim=-1)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))  # (B, h*w, K)
        return masks.transpose(1, 2).reshape(x.shape[0], self.num_classes, grid[0], grid[1])


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class WeakTrSegmenter(nn.Module):
    """ViT encoder + mask-transformer decoder: normalised images (B, 3, H, W) -> logits (B, K, H, W).

    The decoder has the encoder's width and width // 64 heads, as Segmenter configures it for ViT-S.
    """

    def __init__(self, encoder: VisionTransformer, num_classes: int, layers: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.patch_size = int(encoder.patch_embed.patch_size[0])
        width = encoder.embed_dim
        self.decoder = MaskTransformerDecoder(num_classes, width, width, layers, max(1, width // 64), dropout)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The pretrained encoder (WeakTr: 0.1x learning rate) and the new decoder."""
        return {"backbone": list(self.encoder.parameters()), "head": list(self.decoder.parameters())}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        patch = self.patch_size
        padded = F.pad(images, (0, -width % patch, 0, -height % patch))
        tokens = self.encoder.forward_features(padded)[:, self.encoder.num_prefix_tokens :]
        grid = (padded.shape[-2] // patch, padded.shape[-1] // patch)
        logits = self.decoder(tokens, grid)
        logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :height, :width]
