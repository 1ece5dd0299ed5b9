"""WeakTr's CAM network (paper section III-A; the reference's models.py): a plain ViT with one class token per
foreground class and three multi-label classifiers.

- C class tokens (copies of the pretrained CLS token) and C copies of its position embedding precede the patch
  tokens; there is no final LayerNorm. Token logits: each class token's mean over channels.
- Coarse CAM: a 3x3 conv on the patch-token grid; coarse logits: its spatial mean.
- AAF (`aaf.py`) weights the detached attention maps of every head of every layer, by the detached block outputs of
  that head; their mean gives the class-to-patch part CA (C x hw) and the patch-to-patch part PA (hw x hw).
- CAMs = CA * relu(coarse CAM) (detached); fine CAM = PA @ CAMs; fine logits: its spatial mean.

The backbone is a timm VisionTransformer (`arch`, e.g. deit_small_patch16_224) of which this module keeps the patch
embedding, the optional pre-norm (CLIP towers have one) and the blocks; the blocks run here so that each returns its
attention map and its attention output. Maps are ordered head-major (map = head * depth + layer) and a head's
features are the channels d * heads + head, as the reference reshapes them; AAF's weights depend on that order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss_core.camnet.aaf import AdaptiveAttentionFusion


class WeakTrNetwork(nn.Module):
    def __init__(
        self,
        vit: nn.Module,
        num_classes: int,
        *,
        reduction: float,
        feat_reduction: int,
        pool: str,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.grid = tuple(int(side) for side in vit.patch_embed.grid_size)
        if self.grid[0] != self.grid[1]:
            raise ValueError(f"the backbone's position grid must be square, got {self.grid}")
        dim, depth, heads = vit.embed_dim, len(vit.blocks), vit.blocks[0].attn.num_heads
        self.heads = heads
        self.patch_embed = vit.patch_embed
        self.norm_pre = vit.norm_pre
        self.pos_drop = vit.pos_drop
        self.blocks = vit.blocks
        self.cls_token = nn.Parameter(torch.zeros(1, num_classes, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_classes + self.grid[0] * self.grid[1], dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.head = nn.Conv2d(dim, num_classes, kernel_size=3, stride=1, padding=1)
        self.aaf = AdaptiveAttentionFusion(depth * heads, reduction, dim // heads, feat_reduction, pool)

    def position_embedding(self, rows: int, cols: int, height: int, width: int) -> torch.Tensor:
        """The position embedding for a rows x cols grid: the pretrained one, or its patch part resized bicubically
        with the reference's scale factors (grid + 0.1) / side, which also set the sampling positions."""
        count = self.pos_embed.shape[1] - self.num_classes
        if rows * cols == count and height == width:
            return self.pos_embed
        side, dim = math.isqrt(count), self.pos_embed.shape[-1]
        patch = self.pos_embed[:, self.num_classes :].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side), mode="bicubic")
        if patch.shape[-2:] != (rows, cols):
            raise ValueError(f"position embedding resized to {tuple(patch.shape[-2:])}, wanted {(rows, cols)}")
        patch = patch.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
        return torch.cat((self.pos_embed[:, : self.num_classes], patch), dim=1)

    def _block(self, block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One timm block, returning (tokens, attention map (B, heads, N, N), attention output (B, N, D))."""
        attention = block.attn
        batch, tokens, dim = x.shape
        qkv = attention.qkv(block.norm1(x)).reshape(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attention.q_norm(q), attention.k_norm(k)
        weights = ((q @ k.transpose(-2, -1)) * attention.scale).softmax(dim=-1)
        out = (attention.attn_drop(weights) @ v).transpose(1, 2).reshape(batch, tokens, dim)
        out = attention.proj_drop(attention.proj(attention.norm(out)))
        x = x + block.drop_path1(block.ls1(out))
        x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
        return x, weights, out

    def _forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = images.shape[-2:]
        rows, cols = height // self.patch_size, width // self.patch_size
        x = self.patch_embed.proj(images).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.norm_pre(self.pos_drop(x + self.position_embedding(rows, cols, height, width)))
        maps, features = [], []
        for block in self.blocks:
            x, weights, out = self._block(block, x)
            maps.append(weights.detach())
            features.append(out.detach())
        batch, tokens, dim = x.shape
        classes = self.num_classes
        attention, map_features = per_map(maps, features, self.heads)
        fused = self.aaf(map_features, attention).mean(dim=1)
        patches = x[:, classes:].reshape(batch, rows, cols, dim).permute(0, 3, 1, 2)
        coarse = self.head(patches)
        cross = fused[:, :classes, classes:].reshape(batch, classes, rows, cols)
        cams = cross * F.relu(coarse.detach())
        return {
            "class_tokens": x[:, :classes],
            "coarse": coarse,
            "cams": cams,
            "patch_attention": fused[:, classes:, classes:],
        }

    @staticmethod
    def refine(cams: torch.Tensor, patch_attention: torch.Tensor) -> torch.Tensor:
        """The fine CAM: every class map propagated through the patch affinity, PA @ CAM."""
        batch, classes, rows, cols = cams.shape
        flat = cams.reshape(batch, classes, rows * cols, 1)
        return (patch_attention.unsqueeze(1) @ flat).reshape(batch, classes, rows, cols)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> the (B, C) logits of the class tokens, the coarse CAM and the fine CAM."""
        out = self._forward(images)
        fine = self.refine(out["cams"], out["patch_attention"])
        return out["class_tokens"].mean(-1), out["coarse"].mean(dim=(2, 3)), fine.mean(dim=(2, 3))

    def cams(self, images: torch.Tensor, patch_refine: bool = True) -> torch.Tensor:
        """(B, 3, H, W) -> the CAMs (B, C, H // patch, W // patch) of the reference's CAM generation
        (`return_att=True`), by default refined through the patch affinity (PA @ CAMs)."""
        out = self._forward(images)
        return self.refine(out["cams"], out["patch_attention"]) if patch_refine else out["cams"]


def per_map(maps: list[torch.Tensor], outputs: list[torch.Tensor], heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each layer's attention (B, heads, N, N) and attention output (B, N, D) -> AAF's inputs, head-major as the
    reference orders them: maps (B, heads * depth, N, N) with map h * depth + l the attention of head h in layer l,
    and features (B, heads * depth, N, D / heads) with channel d * heads + h of layer l's output as feature d of
    that map (the output's channels are split as (D / heads, heads), not per head)."""
    depth, (batch, tokens, _) = len(maps), outputs[0].shape
    attention = torch.stack(maps).permute(1, 2, 0, 3, 4).reshape(batch, heads * depth, tokens, tokens)
    features = torch.stack(outputs).view(depth, batch, tokens, -1, heads)
    return attention, features.permute(1, 4, 0, 2, 3).reshape(batch, heads * depth, tokens, -1)


def expand_class_tokens(state: Mapping[str, torch.Tensor], num_classes: int) -> dict[str, Any]:
    """A single-CLS ViT state (timm names) for this network: the CLS token and its position embedding copied once
    per class, the final norm and classifier dropped (the reference loads DeiT this way)."""
    out = {key: value for key, value in state.items() if not key.startswith(("norm.", "head.", "fc_norm."))}
    out["cls_token"] = state["cls_token"].repeat(1, num_classes, 1)
    pos = state["pos_embed"]
    out["pos_embed"] = torch.cat((pos[:, :1].repeat(1, num_classes, 1), pos[:, 1:]), dim=1)
    return out
