"""A tiny random Stable Diffusion pipeline of diffusers' own classes, as tests save and load it (diffusers layout)."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import torch

from wsss_core.models.compat import ensure_torchvision

ensure_torchvision()
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402
from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

CLIP_MERGES = 49152 - 256 - 2  # CLIP's BPE keeps this many merges, the first line of the file being a header
TINY_SIZE = 32  # pixels; the tiny VAE halves it, so latents are 16x16


def clip_tokenizer(folder: Path) -> CLIPTokenizer:
    """CLIP's tokenizer built offline from the BPE file that open_clip ships."""
    package = Path(importlib.util.find_spec("open_clip").submodule_search_locations[0])
    lines = gzip.open(package / "bpe_simple_vocab_16e6.txt.gz").read().decode("utf-8").split("\n")
    merges = lines[1 : CLIP_MERGES + 1]
    byte_symbols = list(bytes_to_unicode().values())
    vocab = byte_symbols + [symbol + "</w>" for symbol in byte_symbols] + [merge.replace(" ", "") for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77)


def sd_pipeline(
    tokenizer_dir: Path, *, unet: dict, vae_channels: tuple[int, ...], image_size: int, text_width: int, text_mlp: int
) -> StableDiffusionPipeline:
    """A random-weight pipeline of Stable Diffusion 1.x/2.x's components (seed 0): the UNet of config `unet`, a VAE
    with `vae_channels` per level (one halving per level after the first), a 2-layer CLIP text encoder, SD 2.1 base's
    scheduler and CLIP's own tokenizer (built in `tokenizer_dir`)."""
    torch.manual_seed(0)
    unet_model = UNet2DConditionModel(**unet)
    vae = AutoencoderKL(
        block_out_channels=vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=image_size,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408, hidden_size=text_width, intermediate_size=text_mlp, num_attention_heads=4,
            num_hidden_layers=2, projection_dim=text_width, max_position_embeddings=77, bos_token_id=49406,
            eos_token_id=49407,
        )
    )  # fmt: skip
    # Stable Diffusion 2.1 base's scheduler settings
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1,
        set_alpha_to_one=False,
    )  # fmt: skip
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(tokenizer_dir), unet=unet_model,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def tiny_pipeline(folder: Path, heads: tuple[int, int] = (2, 4)) -> StableDiffusionPipeline:
    """`heads`: attention heads of the down blocks at full and half latent resolution (the up blocks mirror them)."""
    unet = {
        "sample_size": TINY_SIZE // 2,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": heads,  # diffusers reads this as the number of heads per resolution
        "norm_num_groups": 8,
    }
    return sd_pipeline(folder, unet=unet, vae_channels=(16, 32), image_size=TINY_SIZE, text_width=32, text_mlp=37)


def save_tiny_pipeline(folder: Path, heads: tuple[int, int] = (2, 4)) -> Path:
    """A tiny pipeline written to `folder` as a published one is (diffusers layout, safetensors weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_files = folder.with_name(folder.name + "_tokenizer")
    tokenizer_files.mkdir(exist_ok=True)
    tiny_pipeline(tokenizer_files, heads).save_pretrained(folder)
    return folder
