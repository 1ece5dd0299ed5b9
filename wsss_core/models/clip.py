"""CLIP as every method here uses it: open_clip's model, loaded from a verified file, run block by block.

Loading (`load_clip`) builds open_clip's own `CLIP` class and fills it from a pretrained tag (open_clip's download and
cache), a local checkpoint (sha256 recorded, `weights_only`), or deliberately random weights for tests and demos.

The visual side (`VisualRunner`) re-runs open_clip's vision transformer with its own modules and weights, but one block
at a time and with the attention computed in the open: callers get every layer's tokens, the q/k/v and attention
weights of chosen blocks, can add a bias to the attention logits or replace the attention outright, and can start
gradients at any layer. Inputs of any size (multiples of the patch size) work through an interpolated positional
embedding, as in CLIP-ES.

The text side encodes prompts (`encode_text`) and runs the text transformer on given token embeddings
(`encode_text_embeddings`), which is how learnable context prompts are spliced in.
"""

from __future__ import annotations

import copy
import math
import zipfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from wsss_core.models import resolve_device
from wsss_core.models.checkpoints import CheckpointError, CheckpointRef, load_state_dict, verify_checkpoint
from wsss_core.models.compat import ensure_torchvision
from wsss_core.models.torchscript_archive import read_torchscript_tensors

ensure_torchvision()  # open_clip imports torchvision, which needs this on CPU-only machines
import open_clip  # noqa: E402
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer  # noqa: E402

# Entries of OpenAI's original checkpoints that are metadata, not weights; open_clip drops them the same way.
# `attn_mask` is a non-persistent buffer in open_clip but appears in TorchScript archives.
_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
_OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")

# (q, k, v per head, block input tokens) -> attention output per head, shaped like v
AttentionOverride = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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
    """

    def __init__(self, clip: ClipModel):
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
        (align_corners=False, as CLIP-ES); the model's own embedding at its native grid. Cached per grid."""
        grid = (int(grid[0]), int(grid[1]))
        if grid not in self._positional_cache:
            self._positional_cache[grid] = self._interpolate_positional_embedding(grid)
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


# -------------------------------------------------------------------------------------------------------- text side


@torch.no_grad()
def encode_text(clip: ClipModel, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings (P, E) of `prompts`, computed by open_clip's encode_text in batches, no grad."""
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    chunks = []
    for start in range(0, len(prompts), batch_size):
        token_ids = clip.tokenizer(list(prompts[start : start + batch_size])).to(clip.device)
        chunks.append(clip.model.encode_text(token_ids).float())
    return F.normalize(torch.cat(chunks), dim=-1)


def encode_text_embeddings(clip: ClipModel, token_embeddings: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Text features (P, E), not normalised, from token embeddings (P, L, D) in place of token_embedding(token_ids).

    Follows open_clip's CLIP.encode_text after its embedding lookup: positional embedding, causal transformer,
    ln_final, the EOT token (highest id) of `token_ids`, text projection. Gradients flow to `token_embeddings`.
    """
    model = clip.model
    if model.text_pool_type != "argmax":
        raise ValueError(f"{clip.arch}: text pooling {model.text_pool_type!r} is not supported, only 'argmax'")
    if token_embeddings.shape[:2] != token_ids.shape:
        raise ValueError(f"token embeddings {tuple(token_embeddings.shape)} do not match ids {tuple(token_ids.shape)}")
    cast_dtype = model.transformer.get_cast_dtype()
    attn_mask, length = model.attn_mask, token_ids.shape[1]
    if attn_mask is not None:
        # Under the causal mask no token after the last EOT reaches an EOT, so the sequence is cut there: the same
        # features, 2-3x less work for short prompts (learnable prompts run this on every training step).
        length = int(token_ids.argmax(dim=-1).max()) + 1
        attn_mask = attn_mask[:length, :length]
    x = token_embeddings[:, :length].to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=attn_mask)
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), token_ids.argmax(dim=-1)]
    if model.text_projection is None:
        return x
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection
