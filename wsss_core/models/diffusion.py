"""Stable Diffusion (diffusers): load a pipeline, generate images per seed, capture UNet self-attention.

Two uses in DiCLIP: TSA generates single-class images for its key-value cache (`generate_images`), and VCE
reads the self-attention of chosen UNet blocks after one denoising pass over a noised real image
(`capture_self_attention`). Only Stable Diffusion 1.x/2.x pipelines are supported (DiCLIP uses SD 2.1 base).

Weights are never downloaded implicitly: `load_sd_pipeline` reads a local diffusers directory, or a model id
already in the Hugging Face cache unless `local_files_only=False` is passed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from wsss_core.hashing import sha256_file
from wsss_core.models import resolve_device
from wsss_core.models.checkpoints import CheckpointError
from wsss_core.models.compat import ensure_torchvision

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

WEIGHT_SUFFIXES = (".safetensors", ".bin")
_MODEL_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass
class SdHandle:
    """A Stable Diffusion pipeline on its device, with the weight files that made it.

    Arguments:
      pipeline: the diffusers `StableDiffusionPipeline` (no safety checker, progress bars off).
      provenance: {"source": the directory or model id given, "files": {relative path: sha256} of the weight
        files of the pipeline's components}.
      device: where the pipeline runs.
      dtype: its weights' dtype (float16 on CUDA, float32 on CPU, unless chosen).
    """

    pipeline: StableDiffusionPipeline
    provenance: dict[str, Any]
    device: torch.device
    dtype: torch.dtype


def load_sd_pipeline(
    source: str | Path,
    *,
    device: torch.device | str = "auto",
    dtype: torch.dtype | None = None,
    local_files_only: bool = True,
) -> SdHandle:
    """Load a Stable Diffusion pipeline from a local diffusers directory or a Hugging Face model id.

    A model id is looked up in the local Hugging Face cache only, unless `local_files_only=False`
    allows a download. `dtype` defaults to float16 on CUDA (half the memory, as Stable Diffusion is
    usually run) and float32 on CPU, where half precision is slow or unsupported.
    """
    device = resolve_device(device)
    folder = _local_folder(source, local_files_only)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)

    ensure_torchvision()  # diffusers' pipelines import transformers' image processors, which import torchvision
    from diffusers import StableDiffusionPipeline

    with _quiet_loading():
        pipeline = StableDiffusionPipeline.from_pretrained(
            folder, dtype=dtype, local_files_only=True, safety_checker=None, requires_safety_checker=False
        )
    pipeline.set_progress_bar_config(disable=True)  # callers show their own progress over many images
    provenance = {"source": str(source), "files": _weight_file_hashes(folder)}
    return SdHandle(pipeline=pipeline.to(device), provenance=provenance, device=device, dtype=dtype)


def _local_folder(source: str | Path, local_files_only: bool) -> Path:
    """The diffusers directory behind `source`: the directory itself, or the cached snapshot of a model id."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise CheckpointError(f"{path}: not a diffusers pipeline directory (it has no model_index.json)")
        return path
    if path.exists():
        raise CheckpointError(f"{path}: is a file; expected a diffusers pipeline directory (with model_index.json)")
    if isinstance(source, Path) or not _MODEL_ID.match(str(source)):
        raise CheckpointError(
            f"Stable Diffusion directory not found: {path}. Download a diffusers-format pipeline there first "
            "(DiCLIP uses Stable Diffusion 2.1 base), or set the path in params.yaml."
        )

    ensure_torchvision()
    from diffusers import DiffusionPipeline

    try:
        with _quiet_loading():
            return Path(DiffusionPipeline.download(str(source), local_files_only=local_files_only))
    except (OSError, ValueError) as error:  # huggingface_hub's "not cached" and "not found" errors
        if local_files_only:
            reason = "it is not in the local Hugging Face cache"
            allow = ", or pass local_files_only=False to allow a download"
        else:
            reason, allow = f"it could not be fetched ({error})", ""
        raise CheckpointError(
            f"Stable Diffusion {source!r} is neither a local directory nor a usable model id: {reason}. "
            f"Download it first (e.g. `huggingface-cli download {source} --local-dir <dir>`) and pass the directory"
            f"{allow}."
        ) from error


def pipeline_weight_files(folder: Path) -> dict[str, list[Path]]:
    """The weight files of each component subfolder that model_index.json names, component by component (an empty
    list for a component without weight files, e.g. the tokenizer or a folder not downloaded)."""
    index = json.loads((folder / "model_index.json").read_text())
    components = sorted(name for name, entry in index.items() if not name.startswith("_") and _is_component(entry))
    return {
        component: [
            file
            for file in sorted((folder / component).rglob("*"))
            if file.is_file() and file.name.endswith(WEIGHT_SUFFIXES)
        ]
        for component in components
    }


def _weight_file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of the weight files in the component subfolders that model_index.json names."""
    return {
        file.relative_to(folder).as_posix(): sha256_file(file)
        for files in pipeline_weight_files(folder).values()
        for file in files
    }


def _is_component(entry: Any) -> bool:
    return isinstance(entry, list) and len(entry) == 2 and all(part is not None for part in entry)


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence diffusers' and transformers' loading progress bars, then restore their settings."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    was_enabled = [(lib, lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    for lib, _ in was_enabled:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, enabled in was_enabled:
            if enabled:
                lib.enable_progress_bar()


def generate_images(
    handle: SdHandle,
    prompts: list[str],
    seeds: list[int],
    *,
    steps: int = 45,
    guidance_scale: float = 10.0,
    height: int = 512,
    width: int = 512,
    batch_size: int = 4,
) -> list[np.ndarray]:
    """Generate one image per (prompt, seed) pair as uint8 HxWx3 arrays, in input order.

    Each image has its own generator seeded with its seed, created on the CPU so the initial noise is the
    same on every device; image i therefore depends only on (prompts[i], seeds[i]), not on the other images of its
    batch. Another batch size runs other GEMM shapes, which on some CPUs round a pixel differently (by one level), so
    callers that must give the same bytes after a resume keep the batch size fixed (the sd_cache stage: one image
    per call). Defaults are DiCLIP's TSA settings (45 steps, guidance 10).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"generate_images: {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    if batch_size < 1:
        raise ValueError(f"generate_images: batch_size must be at least 1, got {batch_size}")
    images: list[np.ndarray] = []
    for start in range(0, len(prompts), batch_size):
        batch_seeds = seeds[start : start + batch_size]
        output = handle.pipeline(
            prompt=prompts[start : start + batch_size],
            generator=[torch.Generator("cpu").manual_seed(int(seed)) for seed in batch_seeds],
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            output_type="np",
        )
        images.extend((np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8) for image in output.images)
    return images


def resized_logits(query: torch.Tensor, key: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, heads, N, D) queries and keys of a square token grid -> (B, heads, grid², grid²): q and k bilinearly
    resized to grid x grid (align_corners False), then q k^T without scale or softmax, in their dtype. DiCLIP's
    VCE map, which ACR refines (wsss_core/cam/diclip/acr.py)."""

    def resize(tokens: torch.Tensor) -> torch.Tensor:
        batch, heads, n, dim = tokens.shape
        side = math.isqrt(n)
        maps = tokens.transpose(-2, -1).reshape(batch * heads, dim, side, side)
        resized = F.interpolate(maps, size=(grid, grid), mode="bilinear", align_corners=False)
        return resized.reshape(batch, heads, dim, grid * grid).transpose(-2, -1)

    return resize(query) @ resize(key).transpose(-2, -1)


class SelfAttentionRecorder:
    """Attention processor for a self-attention layer that keeps its softmax probabilities.

    It computes what diffusers' default processors compute (softmax(q k^T * scale) v, then the output
    projection), with the scores and softmax in float32, and stores the probabilities averaged over the
    batch axis as `probabilities` (heads, N, N): with classifier-free guidance that axis holds the
    conditional and unconditional copies of one image, so the average is over both. With `logit_grid`, it also
    stores `resized_logits` (heads, grid², grid²), float32, averaged the same way (see `resized_logits`).
    """

    def __init__(self, logit_grid: int | None = None) -> None:
        self.probabilities: torch.Tensor | None = None
        self.logit_grid = logit_grid
        self.resized_logits: torch.Tensor | None = None

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("SelfAttentionRecorder records self-attention only (no encoder states, no mask)")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_shape = hidden_states.shape if hidden_states.ndim == 4 else None
        if image_shape is not None:  # (B, C, H, W) -> (B, H*W, C) tokens
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        batch, tokens, _ = hidden_states.shape
        query, key, value = (
            projection(hidden_states).view(batch, tokens, attn.heads, -1).transpose(1, 2)
            for projection in (attn.to_q, attn.to_k, attn.to_v)
        )
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if self.logit_grid is not None:
            self.resized_logits = resized_logits(query, key, self.logit_grid).detach().float().mean(dim=0)

        # float32 softmax: these probabilities are the product; half precision would quantise small entries
        scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * attn.scale
        probabilities = scores.softmax(dim=-1)
        self.probabilities = probabilities.detach().mean(dim=0)
        hidden_states = torch.matmul(probabilities.to(value.dtype), value)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, tokens, -1)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # projection, dropout

        if image_shape is not None:
            hidden_states = hidden_states.transpose(1, 2).reshape(image_shape)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def attention_blocks(unet: UNet2DConditionModel) -> dict[str, list[str]]:
    """Map each attention block of `unet` (e.g. "up_blocks.1.attentions.2") to its self-attention processor keys."""
    blocks: dict[str, list[str]] = {}
    for key in unet.attn_processors:
        if key.endswith(".attn1.processor"):
            block = key.split(".transformer_blocks.")[0]
            blocks.setdefault(block, []).append(key)
    return blocks


@contextmanager
def record_self_attention(
    unet: UNet2DConditionModel, blocks: Sequence[str], logit_grid: int | None = None
) -> Iterator[dict[str, SelfAttentionRecorder]]:
    """Install a `SelfAttentionRecorder` (with `logit_grid`) on the self-attention (attn1) of each named block;
    restore on exit.

    Every other attention layer keeps its processor. Yields {block name: recorder}.
    """
    available = attention_blocks(unet)
    unknown = [block for block in blocks if block not in available]
    if unknown:
        raise ValueError(f"unknown attention block(s) {unknown}; this UNet has: {', '.join(available)}")
    several = [block for block in blocks if len(available[block]) != 1]
    if several:
        raise ValueError(f"block(s) {several} hold several self-attention layers; only one per block is supported")

    original = dict(unet.attn_processors)
    recorders = {block: SelfAttentionRecorder(logit_grid) for block in blocks}
    patched = dict(original)
    for block, recorder in recorders.items():
        patched[available[block][0]] = recorder
    unet.set_attn_processor(patched)
    try:
        yield recorders
    finally:
        unet.set_attn_processor(original)


def capture_self_attention(handle: SdHandle, image_uint8: np.ndarray, **settings: Any) -> dict[str, torch.Tensor]:
    """Self-attention probabilities (heads, N, N) of the named UNet blocks for one image: `vce_pass`'s."""
    return {block: recorder.probabilities for block, recorder in vce_pass(handle, image_uint8, **settings).items()}


@torch.no_grad()
def vce_pass(
    handle: SdHandle,
    image_uint8: np.ndarray,
    *,
    blocks: Sequence[str],
    logit_grid: int | None = None,
    timestep_index: int = 45,
    num_inference_steps: int = 50,
    prompt: str = "",
    size: tuple[int, int] = (320, 320),
    seed: int = 0,
) -> dict[str, SelfAttentionRecorder]:
    """DiCLIP's VCE: one UNet pass over a noised image, the named blocks' self-attention recorded.

    The image (uint8 HxWx3) is resized to `size` (height, width) and encoded with the VAE (posterior mean,
    times the VAE scaling factor). The scheduler is set to `num_inference_steps`; its timestep at
    `timestep_index` (SD 2.1 base's PNDM schedule: index 45 of 50 is t=101) sets the amount of noise, drawn
    from `seed`. One UNet pass with the embedding of `prompt` (empty by default, no guidance) gives the
    maps; N is the number of tokens at the block's resolution. Returns {block: its recorder}: `probabilities` and,
    with `logit_grid`, `resized_logits`, float32 on the pipeline's device. (DiCLIP's reference draws its noise from
    the global RNG, so its maps are not reproducible per image; here they depend on `seed` only.)
    """
    image = np.asarray(image_uint8)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"capture_self_attention: expected a uint8 HxWx3 image, got {image.dtype} {image.shape}")
    pipeline, device = handle.pipeline, handle.device
    unet, vae = pipeline.unet, pipeline.vae

    # A fresh scheduler: set_timesteps changes its state, and the pipeline's own must stay as it was.
    scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config)
    scheduler.set_timesteps(num_inference_steps, device=device)
    if not 0 <= timestep_index < len(scheduler.timesteps):
        raise ValueError(f"timestep_index {timestep_index} is outside the {len(scheduler.timesteps)} scheduler steps")
    timestep = scheduler.timesteps[timestep_index]

    from PIL import Image

    pixels = pipeline.image_processor.preprocess(Image.fromarray(image), height=size[0], width=size[1])
    latents = vae.encode(pixels.to(device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
    noisy = scheduler.add_noise(latents, noise.to(device, latents.dtype), timestep.reshape(1))
    prompt_embeds, _ = pipeline.encode_prompt(prompt, device, 1, False)

    with record_self_attention(unet, blocks, logit_grid) as recorders:
        unet(noisy, timestep, encoder_hidden_states=prompt_embeds)
    return recorders
