"""The WeCLIP segmentation head on a frozen CLIP (used by ExCEL, DiCLIP and VDA).

Every visual block's patch tokens go through their own MLP (Linear D->256, ReLU, Linear 256->256); the per-layer
maps are concatenated and fused by a 1x1 conv to 256 channels, Dropout2d(0.1); three pre-LN transformer layers of
width 256 (8 heads, MLP 4x QuickGELU, no positional embedding: open_clip's own residual attention block) mix them;
a 1x1 conv gives the class logits on the token grid (1/16 resolution), upsampled bilinearly to the input size.

CLIP stays frozen and outside the module's parameters: the state dict holds only the head, and CLIP's weights are
reloaded from their own (sha256-recorded) source.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsss_core.models.clip import ClipModel
from wsss_core.models.clip_visual import VisualRunner, tokens_to_map
from wsss_core.models.compat import import_open_clip

import_open_clip()  # torchvision made importable on CPU-only machines, transformers left out
from open_clip.transformer import QuickGELU, ResidualAttentionBlock  # noqa: E402


class WeClipHead(nn.Module):
    """The trainable head: per-layer MLPs, 1x1 fusion, transformer layers, 1x1 classifier (token grid logits)."""

    def __init__(
        self,
        clip_width: int,
        num_layers: int,
        num_classes: int,
        embedding_dim: int = 256,
        transformer_layers: int = 3,
        heads: int = 8,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if embedding_dim % heads:
            raise ValueError(f"embedding_dim {embedding_dim} is not divisible by {heads} heads")
        self.layer_mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(clip_width, embedding_dim), nn.ReLU(), nn.Linear(embedding_dim, embedding_dim))
            for _ in range(num_layers)
        )
        self.fuse = nn.Conv2d(embedding_dim * num_layers, embedding_dim, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout)
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(embedding_dim, heads, act_layer=QuickGELU, batch_first=True)
            for _ in range(transformer_layers)
        )
        self.classifier = nn.Conv2d(embedding_dim, num_classes, kernel_size=1)

    def forward(self, layer_tokens: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        """Tokens of the chosen CLIP layers, each (B, 1 + h*w, D) -> logits (B, K, h, w)."""
        if len(layer_tokens) != len(self.layer_mlps):
            raise ValueError(f"head expects {len(self.layer_mlps)} layers of tokens, got {len(layer_tokens)}")
        maps = [
            tokens_to_map(mlp(tokens.float()), grid) for mlp, tokens in zip(self.layer_mlps, layer_tokens, strict=True)
        ]
        fused = self.dropout(self.fuse(torch.cat(maps, dim=1)))
        batch, channels, height, width = fused.shape
        sequence = fused.flatten(2).transpose(1, 2)
        for block in self.blocks:
            sequence = block(sequence)
        return self.classifier(sequence.transpose(1, 2).reshape(batch, channels, height, width))


class WeClipSegmenter(nn.Module):
    """CLIP (frozen, not a submodule) + `WeClipHead`: normalised images (B, 3, H, W) -> logits (B, K, H, W).

    Images of any size work: they are padded on the bottom/right to multiples of CLIP's patch size and the logits
    cropped back. `feature_layers` is how many of CLIP's last blocks feed the head (None: all of them, 12 for
    ViT-B/16, as ExCEL feeds its head; the original WeCLIP code used 11).
    """

    def __init__(
        self,
        clip: ClipModel,
        num_classes: int,
        *,
        feature_layers: int | None = None,
        embedding_dim: int = 256,
        transformer_layers: int = 3,
        heads: int = 8,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.runner = VisualRunner(clip)  # a plain object, so CLIP's weights stay out of parameters and state dict
        total = self.runner.num_layers
        count = total if feature_layers is None else feature_layers
        if not 1 <= count <= total:
            raise ValueError(f"feature_layers must lie in 1..{total} for {clip.arch}, got {feature_layers}")
        self.layer_indices = list(range(total - count, total))
        self.patch_size = clip.patch_size
        self.head = WeClipHead(
            self.runner.visual.transformer.width,
            count,
            num_classes,
            embedding_dim=embedding_dim,
            transformer_layers=transformer_layers,
            heads=heads,
            dropout=dropout,
        )

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Pretrained backbone parameters (none: CLIP is frozen) and new head parameters, for their learning rates."""
        return {"backbone": [], "head": list(self.head.parameters())}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        patch = self.patch_size
        padded = F.pad(images, (0, -width % patch, 0, -height % patch))
        with torch.no_grad():
            trace = self.runner.forward(padded)
        tokens = [trace.tokens[index] for index in self.layer_indices]
        logits = self.head(tokens, trace.grid)
        logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :height, :width]
