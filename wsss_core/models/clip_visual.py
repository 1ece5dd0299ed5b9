"""The visual side of CLIP: `prepare_image` (CLIP-ES's resizing to multiples of the patch size) and `VisualRunner`,
which re-runs open_clip's vision transformer with its own modules and weights, but one block at a time and with the
attention computed in the open: callers get every layer's tokens, the q/k/v and attention weights of chosen blocks,
can add a bias to the attention logits or replace the attention outright, and can start gradients at any layer.
Inputs of any size (multiples of the patch size) work through an interpolated positional embedding, as in CLIP-ES.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from wsss_core.models.clip import ClipModel
from wsss_core.models.compat import import_open_clip

import_open_clip()  # torchvision made importable on CPU-only machines, transformers left out
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer  # noqa: E402

# (q, k, v per head, block input tokens) -> attention output per head, shaped like v
AttentionOverride = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------------------------------ image input


def prepare_image(
    clip: ClipModel,
    image_uint8_hwc: np.ndarray,
    scale: float = 1.0,
    flip: bool = False,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> normalised (1, 3, H', W') on clip.device, H' = ceil(H*scale/patch)*patch (CLIP-ES).

    Resizing is PIL bicubic, as CLIP-ES's torchvision Resize on PIL images; `flip` mirrors horizontally after it.
    `mean`/`std` replace CLIP's normalisation (ExCEL normalises with ImageNet's).
    """
    if not isinstance(image_uint8_hwc, np.ndarray) or image_uint8_hwc.dtype != np.uint8:
        raise ValueError(
            f"image must be a uint8 numpy array, got {type(image_uint8_hwc).__name__} "
            f"of dtype {getattr(image_uint8_hwc, 'dtype', None)}"
        )
    if image_uint8_hwc.ndim != 3 or image_uint8_hwc.shape[2] != 3:
        raise ValueError(f"image must be RGB shaped (H, W, 3), got shape {image_uint8_hwc.shape}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    height, width = image_uint8_hwc.shape[:2]
    patch = clip.patch_size
    new_height = math.ceil(height * scale / patch) * patch
    new_width = math.ceil(width * scale / patch) * patch
    resized = Image.fromarray(image_uint8_hwc).resize((new_width, new_height), Image.Resampling.BICUBIC)
    tensor = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    if flip:
        tensor = tensor.flip(-1)
    mean_tensor = torch.tensor(clip.mean if mean is None else mean, dtype=torch.float32).view(3, 1, 1)
    std_tensor = torch.tensor(clip.std if std is None else std, dtype=torch.float32).view(3, 1, 1)
    return ((tensor - mean_tensor) / std_tensor).unsqueeze(0).to(clip.device)


# ------------------------------------------------------------------------------------------------------ visual side


@dataclass
class BlockTrace:
    """What one visual block computed. Shapes: B batch, N = 1 + h*w tokens, D width, H heads, d = D / H.

    `ln_1` is the block's ln_1 output (the Grad-CAM activations of CLIP-ES and FMA-WSSS). q, k, v come straight from
    the block's in_proj (q not yet scaled by d**-0.5). `attention` holds the softmax weights (B, H, N, N) when they
    were computed (capture, or a bias); None when attention ran fused or was replaced.
    """

    index: int
    input: torch.Tensor
    ln_1: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    attention: torch.Tensor | None
    attention_output: torch.Tensor
    output: torch.Tensor


@dataclass
class VisualTrace:
    """A visual forward pass: `tokens[i]` is the output of block i (B, 1+h*w, D), CLS first; `blocks` holds the
    traces of the captured layers (keys are non-negative block indices)."""

    grid: tuple[int, int]
    embedded: torch.Tensor
    tokens: list[torch.Tensor]
    blocks: dict[int, BlockTrace] = field(default_factory=dict)


def attention_probabilities(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) over keys: (B, H, N, d) x2 -> (B, H, N, N)."""
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1)


class VisualRunner:
    """Runs open_clip's vision transformer of `clip` block by block, with open_clip's own modules and weights.

    Typical uses:
    - `forward(images, capture_layers=range(-8, 0), grad_from_layer=-1)`: CLIP-ES (attention of the last 8 layers,
      gradients from the last block's ln_1 output, earlier layers without grad);
    - `block(i, x, attention_override=...)` or `qkv` + `merge_heads` on `blocks[i]`'s modules: ExCEL / DiCLIP dual
      paths that replace the attention of the last blocks;
    - `project(tokens)`: ln_post + proj on every token (CLIP-ES image embedding = mean over patch tokens).

    `fp16_positional_embedding=True` rounds the positional embedding through float16 as CLIP-ES's code does (see
    `positional_embedding`); the default keeps it in the model's dtype.
    """

    def __init__(self, clip: ClipModel, *, fp16_positional_embedding: bool = False):
        visual = clip.model.visual
        if not isinstance(visual, VisionTransformer):
            raise ValueError(
                f"{clip.arch}: VisualRunner needs open_clip's VisionTransformer, got {type(visual).__name__}"
            )
        for index, block in enumerate(visual.transformer.resblocks):
            if not isinstance(block, ResidualAttentionBlock) or not isinstance(block.attn, torch.nn.MultiheadAttention):
                raise ValueError(
                    f"{clip.arch}: block {index} is a {type(block).__name__}, not a standard attention block"
                )
            if not block.attn.batch_first or block.attn.in_proj_weight is None:
                raise ValueError(f"{clip.arch}: block {index} attention is not batch-first with a packed in_proj")
        self.clip = clip
        self.visual = visual
        self.blocks: list[ResidualAttentionBlock] = list(visual.transformer.resblocks)
        self.num_layers = len(self.blocks)
        self.num_heads = self.blocks[0].attn.num_heads
        self.patch_size = clip.patch_size
        self.fp16_positional_embedding = bool(fp16_positional_embedding)
        self._positional_cache: dict[tuple[int, int], torch.Tensor] = {}

    # --- input

    def grid_of(self, images: torch.Tensor) -> tuple[int, int]:
        """Token grid (h, w) of a (B, 3, H, W) batch; H and W must be multiples of the patch size."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be shaped (B, 3, H, W), got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        return height // self.patch_size, width // self.patch_size

    def positional_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1 + h*w, D) positional embedding for a token grid: the CLS row kept, the patch rows resized bilinearly
        (align_corners=False, as CLIP-ES); the model's own embedding at its native grid. Cached per grid.

        With `fp16_positional_embedding` the whole result (CLS row and patch rows) is then rounded to float16 and
        cast back to the model's dtype. CLIP-ES does this at every grid: its clip/model.py `upsample_pos_emb`
        (lines 9-25, called by VisionTransformer.forward on every image) resizes the embedding, even to the native
        grid, and ends with `nn.Parameter(emb.half())`, which forward adds after `.to(x.dtype)`. For fp16-valued
        weights (OpenAI's release; also what CLIP-ES's fp16 cast in build_model leaves) the rounding is a no-op at
        the native grid, since bilinear resizing to the same size returns the values unchanged, and changes only
        interpolated rows. This matches CLIP-ES run in float32 (its CPU path). On CUDA CLIP-ES keeps the weights in
        half precision and interpolates them there, which may round an entry to the neighbouring fp16 value.
        """
        grid = (int(grid[0]), int(grid[1]))
        if grid not in self._positional_cache:
            embedding = self._interpolate_positional_embedding(grid)
            if self.fp16_positional_embedding:
                embedding = embedding.to(torch.float16).to(embedding.dtype)
            self._positional_cache[grid] = embedding
        return self._positional_cache[grid]

    def _interpolate_positional_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        embedding = self.visual.positional_embedding.detach()
        native = tuple(self.visual.grid_size)
        if grid == native:
            return embedding
        width = embedding.shape[1]
        cls_row, patch_rows = embedding[:1], embedding[1:]
        patch_map = patch_rows.float().reshape(1, native[0], native[1], width).permute(0, 3, 1, 2)
        resized = F.interpolate(patch_map, size=grid, mode="bilinear", align_corners=False)
        resized = resized.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], width).to(embedding.dtype)
        return torch.cat([cls_row, resized], dim=0)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embedding + CLS + positional embedding + ln_pre: (B, 3, H, W) -> (B, 1 + h*w, D)."""
        grid = self.grid_of(images)
        visual = self.visual
        patches = visual.conv1(images.to(device=visual.conv1.weight.device, dtype=visual.conv1.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)
        cls_token = visual.class_embedding.to(patches.dtype).view(1, 1, -1).expand(patches.shape[0], -1, -1)
        tokens = torch.cat([cls_token, patches], dim=1) + self.positional_embedding(grid).to(patches.dtype)
        return visual.ln_pre(tokens)

    # --- one block, in pieces

    def qkv(self, index: int, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v per head (B, H, N, d) of block `index` from its ln_1 output, with the block's in_proj weights."""
        attn = self.blocks[index].attn
        batch, tokens, width = normed.shape
        packed = F.linear(normed, attn.in_proj_weight, attn.in_proj_bias)
        packed = packed.reshape(batch, tokens, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        return packed[0], packed[1], packed[2]

    def merge_heads(self, index: int, heads_output: torch.Tensor) -> torch.Tensor:
        """Attention output per head (B, H, N, d) -> (B, N, D) through block `index`'s out_proj."""
        batch, heads, tokens, head_dim = heads_output.shape
        merged = heads_output.transpose(1, 2).reshape(batch, tokens, heads * head_dim)
        return self.blocks[index].attn.out_proj(merged)

    def block(
        self,
        index: int,
        x: torch.Tensor,
        *,
        capture: bool = False,
        attention_override: AttentionOverride | None = None,
        attention_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, BlockTrace]:
        """Run block `index` on tokens x (B, N, D); return its output and trace.

        `attention_bias` (broadcastable to (B, H, N, N)) is added to the attention logits. `attention_override`
        replaces the attention: it gets (q, k, v, x) and returns the per-head output shaped like v, which then goes
        through out_proj, the residual and the MLP as usual. `capture` materialises the attention weights.
        """
        index = self._layer_index(index)
        if attention_override is not None and attention_bias is not None:
            raise ValueError(f"block {index}: give attention_override or attention_bias, not both")
        block = self.blocks[index]
        normed = block.ln_1(x)
        q, k, v = self.qkv(index, normed)
        weights = None
        if attention_override is not None:
            heads_output = attention_override(q, k, v, x)
            if heads_output.shape != v.shape:
                raise ValueError(
                    f"block {index}: attention_override returned shape {tuple(heads_output.shape)}, "
                    f"expected {tuple(v.shape)} (B, heads, N, head_dim)"
                )
        elif capture or attention_bias is not None:
            weights = attention_probabilities(q, k, attention_bias)
            heads_output = weights @ v
        else:
            heads_output = F.scaled_dot_product_attention(q, k, v)
        attention_output = self.merge_heads(index, heads_output)
        hidden = x + block.ls_1(attention_output)
        output = hidden + block.ls_2(block.mlp(block.ln_2(hidden)))
        trace = BlockTrace(index, x, normed, q, k, v, weights, attention_output, output)
        return output, trace

    # --- whole passes

    def forward(
        self,
        images: torch.Tensor,
        *,
        capture_layers: Sequence[int] = (),
        attention_overrides: Mapping[int, AttentionOverride] | None = None,
        attention_biases: Mapping[int, torch.Tensor] | None = None,
        grad_from_layer: int | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> VisualTrace:
        """Embed `images` and run every block; layer indices may be negative (-1 = last block).

        `grad_from_layer=L`: blocks before L run under no_grad and the tokens entering L become a fresh leaf that
        requires grad, so blocks from L on (and their traces' ln_1 outputs) are in the autograd graph although CLIP
        is frozen, even inside a caller's no_grad. `None` leaves grad mode to the caller. `autocast_dtype`
        (e.g. torch.float16 / bfloat16 on CUDA) runs the pass under torch.autocast.
        """
        captured = {self._layer_index(i) for i in capture_layers}
        overrides = {self._layer_index(i): fn for i, fn in (attention_overrides or {}).items()}
        biases = {self._layer_index(i): bias for i, bias in (attention_biases or {}).items()}
        grad_start = None if grad_from_layer is None else self._layer_index(grad_from_layer)
        images = images.to(self.clip.device)
        amp = (
            torch.autocast(device_type=images.device.type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else nullcontext()
        )
        with amp:
            with torch.no_grad() if grad_start is not None else nullcontext():
                x = self.embed(images)
            embedded = x
            tokens, traces = [], {}
            for index in range(self.num_layers):
                with self._grad_mode(index, grad_start):
                    if index == grad_start:
                        x = x.detach().requires_grad_(True)
                    x, trace = self.block(
                        index,
                        x,
                        capture=index in captured,
                        attention_override=overrides.get(index),
                        attention_bias=biases.get(index),
                    )
                tokens.append(x)
                if index in captured or index == grad_start:
                    traces[index] = trace
        return VisualTrace(grid=self.grid_of(images), embedded=embedded, tokens=tokens, blocks=traces)

    @staticmethod
    def _grad_mode(index: int, grad_start: int | None):
        if grad_start is None:
            return nullcontext()
        # enable_grad, not nullcontext: the caller asked for gradients even if it runs everything under no_grad
        return torch.no_grad() if index < grad_start else torch.enable_grad()

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """ln_post then proj on every token: (B, N, D) -> (B, N, E). Token 0 is open_clip's image embedding."""
        return self.visual.ln_post(tokens) @ self.visual.proj

    def _layer_index(self, index: int) -> int:
        if not -self.num_layers <= index < self.num_layers:
            raise ValueError(f"layer index {index} is out of range for {self.num_layers} blocks")
        return index % self.num_layers


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens to a feature map: (B, 1 + h*w, C) -> (B, C, h, w), CLS dropped."""
    batch, count, channels = tokens.shape
    if count != 1 + grid[0] * grid[1]:
        raise ValueError(f"{count} tokens do not fit a {grid[0]}x{grid[1]} grid plus CLS")
    return tokens[:, 1:].transpose(1, 2).reshape(batch, channels, grid[0], grid[1])
