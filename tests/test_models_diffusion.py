"""Stable Diffusion access on a tiny random pipeline saved to disk: loading, per-seed generation, attention capture."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tiny_sd import TINY_SIZE, clip_tokenizer, tiny_pipeline
from wsss_core.hashing import sha256_file
from wsss_core.models.checkpoints import CheckpointError
from wsss_core.models.compat import ensure_torchvision
from wsss_core.models.diffusion import (
    SelfAttentionRecorder,
    attention_blocks,
    capture_self_attention,
    generate_images,
    load_sd_pipeline,
    record_self_attention,
    vce_pass,
)

ensure_torchvision()
from diffusers.models.attention_processor import Attention, AttnProcessor2_0  # noqa: E402


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_sd")
    tiny_pipeline(tmp_path_factory.mktemp("tokenizer")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def handle(sd_dir):
    return load_sd_pipeline(sd_dir, device="cpu")


def random_image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)


def test_tokenizer_built_offline_is_clips(tmp_path):
    tokenizer = clip_tokenizer(tmp_path)
    # CLIP's ids: start 49406, "a" 320, "photo" 1125, "of" 539, "cat" 2368, end 49407
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_loads_a_local_directory_with_provenance(handle, sd_dir):
    expected_files = {
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    }
    assert handle.provenance["source"] == str(sd_dir)
    assert set(handle.provenance["files"]) == expected_files
    for relative, digest in handle.provenance["files"].items():
        assert digest == sha256_file(sd_dir / relative)
    assert handle.device == torch.device("cpu") and handle.dtype == torch.float32
    assert next(handle.pipeline.unet.parameters()).dtype == torch.float32
    assert handle.pipeline.safety_checker is None


def test_missing_directory_is_named(tmp_path):
    missing = tmp_path / "stable-diffusion-2-1-base"
    with pytest.raises(CheckpointError, match="not found") as info:
        load_sd_pipeline(missing, device="cpu")
    assert str(missing) in str(info.value) and "Download" in str(info.value)


def test_directory_without_model_index_is_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="model_index.json") as info:
        load_sd_pipeline(tmp_path, device="cpu")
    assert str(tmp_path) in str(info.value)


def test_uncached_model_id_fails_offline_and_says_to_download():
    with pytest.raises(CheckpointError, match="wsss-tests/no-such-model") as info:
        load_sd_pipeline("wsss-tests/no-such-model", device="cpu")
    assert "Download it first" in str(info.value)


def test_images_depend_only_on_prompt_and_seed(handle):
    prompts, seeds = ["a photo of a cat", "a photo of a dog", "a photo of a cat"], [1, 2, 3]
    settings = dict(steps=2, height=TINY_SIZE, width=TINY_SIZE)
    one_by_one = generate_images(handle, prompts, seeds, batch_size=1, **settings)
    in_pairs = generate_images(handle, prompts, seeds, batch_size=2, **settings)

    assert [image.shape for image in one_by_one] == [(TINY_SIZE, TINY_SIZE, 3)] * 3
    assert all(image.dtype == np.uint8 for image in one_by_one)
    # Another batch size runs other GEMM shapes, whose last bits may differ on some CPUs (an Intel Xeon with AVX-512:
    # one pixel in 3,072 by one level): the same image up to that rounding.
    for single, batched in zip(one_by_one, in_pairs, strict=True):
        difference = np.abs(single.astype(int) - batched.astype(int))
        assert difference.max() <= 1 and (difference > 0).mean() < 0.01
    # Within one batch shape, an image does not depend on the other images of its batch: exactly the same.
    neighbour = generate_images(handle, [prompts[0], "a photo of a bird"], [seeds[0], 9], batch_size=2, **settings)
    np.testing.assert_array_equal(neighbour[0], in_pairs[0])
    # Same prompt, other seed: another image. Same seed again: the same image.
    assert not np.array_equal(one_by_one[0], one_by_one[2])
    np.testing.assert_array_equal(generate_images(handle, prompts[:1], seeds[:1], **settings)[0], one_by_one[0])


def test_generate_needs_one_seed_per_prompt(handle):
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        generate_images(handle, ["a", "b"], [0], steps=1, height=TINY_SIZE, width=TINY_SIZE)


def test_attention_blocks_of_the_tiny_unet(handle):
    assert sorted(attention_blocks(handle.pipeline.unet)) == [
        "down_blocks.0.attentions.0",
        "down_blocks.1.attentions.0",
        "mid_block.attentions.0",
        "up_blocks.0.attentions.0",
        "up_blocks.0.attentions.1",
        "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1",
    ]


def capture(handle, image=None, **overrides):
    settings = dict(blocks=["up_blocks.0.attentions.1", "up_blocks.1.attentions.0"], size=(TINY_SIZE, TINY_SIZE))
    return capture_self_attention(handle, random_image() if image is None else image, **{**settings, **overrides})


def test_capture_shapes_follow_each_blocks_resolution_and_rows_sum_to_one(handle):
    maps = capture(handle)
    # up_blocks.0 works on the 8x8 grid with 4 heads, up_blocks.1 on the 16x16 grid with 2 heads
    assert maps["up_blocks.0.attentions.1"].shape == (4, 64, 64)
    assert maps["up_blocks.1.attentions.0"].shape == (2, 256, 256)
    for probabilities in maps.values():
        assert probabilities.dtype == torch.float32
        assert (probabilities >= 0).all()
        torch.testing.assert_close(probabilities.sum(-1), torch.ones(probabilities.shape[:2]))


def test_capture_is_deterministic_and_uses_its_seed(handle):
    first, again, other_seed = capture(handle), capture(handle), capture(handle, seed=1)
    for block in first:
        assert torch.equal(first[block], again[block])
        assert not torch.equal(first[block], other_seed[block])


def test_capture_restores_the_processors_and_leaves_the_pipeline_scheduler_alone(handle):
    unet = handle.pipeline.unet
    before = dict(unet.attn_processors)
    scheduler_steps = handle.pipeline.scheduler.num_inference_steps
    capture(handle)
    assert all(unet.attn_processors[key] is processor for key, processor in before.items())
    assert handle.pipeline.scheduler.num_inference_steps == scheduler_steps

    with pytest.raises(RuntimeError, match="interrupted"), record_self_attention(unet, ["mid_block.attentions.0"]):
        raise RuntimeError("interrupted")
    assert all(unet.attn_processors[key] is processor for key, processor in before.items())


def test_unet_output_is_unchanged_with_recorders_installed(handle):
    unet = handle.pipeline.unet
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 16, 16, generator=generator)
    text = torch.randn(2, 77, 32, generator=generator)
    with torch.no_grad():
        plain = unet(latents, 101, encoder_hidden_states=text).sample
        with record_self_attention(unet, list(attention_blocks(unet))) as recorders:
            installed = unet.attn_processors
            recorded = unet(latents, 101, encoder_hidden_states=text).sample
    torch.testing.assert_close(recorded, plain, rtol=1e-4, atol=1e-5)
    assert all(recorder.probabilities is not None for recorder in recorders.values())
    # only the self-attention layers (attn1) were given recorders; cross-attention (attn2) kept its processor
    for key, processor in installed.items():
        assert isinstance(processor, SelfAttentionRecorder) == key.endswith(".attn1.processor")


def test_unknown_block_lists_the_available_ones(handle):
    with pytest.raises(ValueError, match="up_blocks.7.attentions.0") as info:
        capture(handle, blocks=["up_blocks.7.attentions.0"])
    assert "up_blocks.1.attentions.1" in str(info.value) and "mid_block.attentions.0" in str(info.value)


def test_capture_rejects_bad_image_and_timestep(handle):
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        capture(handle, image=random_image().astype(np.float32))
    with pytest.raises(ValueError, match="timestep_index 60"):
        capture(handle, timestep_index=60)


def test_recorder_probabilities_by_hand():
    # One head, two tokens e1 and e2, every projection the identity: scores = x x^T / sqrt(2), so each row is
    # softmax([1/sqrt(2), 0]) = [e^0.7071, 1] / (e^0.7071 + 1) = [0.66976, 0.33024], and the output is that row.
    attention = Attention(query_dim=2, heads=1, dim_head=2, out_bias=True)
    with torch.no_grad():
        for linear in (attention.to_q, attention.to_k, attention.to_v, attention.to_out[0]):
            linear.weight.copy_(torch.eye(2))
        attention.to_out[0].bias.zero_()
    tokens = torch.eye(2).unsqueeze(0)
    diagonal = math.exp(1 / math.sqrt(2)) / (math.exp(1 / math.sqrt(2)) + 1)
    expected = torch.tensor([[diagonal, 1 - diagonal], [1 - diagonal, diagonal]])
    assert abs(diagonal - 0.66976) < 1e-5

    recorder = SelfAttentionRecorder()
    attention.set_processor(recorder)
    output = attention(tokens)
    torch.testing.assert_close(recorder.probabilities, expected.unsqueeze(0))
    torch.testing.assert_close(output, expected.unsqueeze(0))
    attention.set_processor(AttnProcessor2_0())
    torch.testing.assert_close(attention(tokens), output)


def test_vce_logits_on_the_blocks_own_grid_are_the_scores_its_softmax_takes(handle):
    block = "up_blocks.0.attentions.1"  # 8x8 tokens, 4 heads
    recorder = vce_pass(handle, random_image(), blocks=[block], logit_grid=8, size=(TINY_SIZE, TINY_SIZE))[block]
    scale = handle.pipeline.unet.up_blocks[0].attentions[1].transformer_blocks[0].attn1.scale
    # resizing 8x8 to 8x8 is the identity, so the logits are q k^T and softmax(scale q k^T) is what the layer used
    torch.testing.assert_close((recorder.resized_logits * scale).softmax(-1), recorder.probabilities)


def test_vce_logits_resized_to_clips_grid_feed_acr(handle):
    from wsss_core.cam.diclip.acr import acr_affinity

    block = "up_blocks.0.attentions.1"
    recorder = vce_pass(handle, random_image(), blocks=[block], logit_grid=4, size=(TINY_SIZE, TINY_SIZE))[block]
    assert recorder.resized_logits.shape == (4, 16, 16) and recorder.resized_logits.dtype == torch.float32
    refined = acr_affinity(recorder.resized_logits[None], side=4, clusters=4)
    assert refined.shape == (1, 16, 16) and torch.isfinite(refined).all()
    assert torch.all((refined.sum(-1) - 1).abs() < 1e-3)  # rows stay distributions through the cluster means
