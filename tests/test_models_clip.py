"""CLIP layer: loading, image preparation, the block-by-block visual runner and text encoding.

Every test uses tiny random-weight CLIPs of open_clip's own classes (no downloads, no real weights).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from wsss_core.hashing import sha256_file
from wsss_core.models import resolve_device
from wsss_core.models.checkpoints import CheckpointError
from wsss_core.models.clip import ClipModel, load_clip
from wsss_core.models.clip_text import encode_text, encode_text_embeddings
from wsss_core.models.clip_visual import VisualRunner, attention_probabilities, prepare_image, tokens_to_map

# Patch 8 on 32x32 images: a 4x4 token grid, 3 blocks of 4 heads of width 16; the real 49408-token vocabulary so
# that the real tokenizer works.
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}


@pytest.fixture(scope="module")
def clip() -> ClipModel:
    return load_clip("tiny", model_cfg=TINY_CFG, random_init=True, device="cpu")


@pytest.fixture(scope="module")
def runner(clip: ClipModel) -> VisualRunner:
    return VisualRunner(clip)


def random_images(batch: int, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def assert_same_weights(first: torch.nn.Module, second: torch.nn.Module) -> None:
    first_state, second_state = first.state_dict(), second.state_dict()
    assert first_state.keys() == second_state.keys()
    for key in first_state:
        assert torch.equal(first_state[key], second_state[key]), key


# ------------------------------------------------------------------------------------------------------- devices


def test_resolve_device_auto_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_resolve_device_refuses_missing_cuda_and_nonsense(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA, which is not available"):
        resolve_device("cuda:0")
    with pytest.raises(ValueError, match="'potato'"):
        resolve_device("potato")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_auto_device_is_cpu_here():
    clip = load_clip(model_cfg=TINY_CFG, random_init=True)
    assert clip.device == torch.device("cpu")
    assert clip.model.visual.conv1.weight.device.type == "cpu"


# ------------------------------------------------------------------------------------------------------- loading


def test_loaded_model_is_frozen_in_eval_mode_with_provenance(clip):
    assert not clip.model.training
    assert all(not parameter.requires_grad for parameter in clip.model.parameters())
    assert clip.patch_size == 8
    assert clip.arch == "tiny"
    assert clip.provenance["random_init"] is True
    assert clip.provenance["checkpoint"] is None
    assert clip.provenance["pretrained"] is None
    assert clip.provenance["model_cfg"]["vision_cfg"]["patch_size"] == 8
    assert clip.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))


def test_random_weights_must_be_asked_for():
    with pytest.raises(ValueError, match="random_init=True"):
        load_clip(model_cfg=TINY_CFG, device="cpu")


def test_incomplete_model_cfg_is_named():
    with pytest.raises(ValueError, match="text_cfg"):
        load_clip(model_cfg={"embed_dim": 32, "vision_cfg": TINY_CFG["vision_cfg"]}, random_init=True, device="cpu")


def test_random_init_conflicts_with_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="contradict"):
        load_clip(model_cfg=TINY_CFG, random_init=True, checkpoint=tmp_path / "w.pt", device="cpu")


def test_random_init_is_reproducible_per_seed():
    first = load_clip(model_cfg=TINY_CFG, random_init=True, device="cpu", seed=3)
    second = load_clip(model_cfg=TINY_CFG, random_init=True, device="cpu", seed=3)
    other = load_clip(model_cfg=TINY_CFG, random_init=True, device="cpu", seed=4)
    assert_same_weights(first.model, second.model)
    assert not torch.equal(first.model.visual.proj, other.model.visual.proj)


def test_unknown_architecture_and_tag_are_named():
    with pytest.raises(ValueError, match="ViT-Nope"):
        load_clip("ViT-Nope", random_init=True, device="cpu")
    with pytest.raises(ValueError, match="no-such-tag"):
        load_clip("ViT-B-16", pretrained="no-such-tag", device="cpu")


def test_pretrained_tag_offline_asks_for_a_local_checkpoint(monkeypatch):
    import open_clip

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    with pytest.raises(CheckpointError, match="cannot be downloaded") as error:
        load_clip("ViT-B-16", pretrained="openai", device="cpu")
    message = str(error.value)
    assert "checkpoint=" in message and "network is unreachable" in message
    assert "openaipublic" in message  # where the weights come from


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_file_loads_identical_weights(clip, tmp_path, suffix):
    path = tmp_path / f"tiny{suffix}"
    state = {key: value.contiguous() for key, value in clip.model.state_dict().items()}
    if suffix == ".pt":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    digest = sha256_file(path)
    loaded = load_clip("tiny", model_cfg=TINY_CFG, checkpoint=path, sha256=digest, device="cpu", seed=99)
    assert_same_weights(clip.model, loaded.model)
    assert loaded.provenance["checkpoint"] == {"path": str(path), "sha256": digest}
    assert loaded.provenance["random_init"] is False
    assert all(not parameter.requires_grad for parameter in loaded.model.parameters())


def test_openai_style_state_dict_loads_and_selects_quick_gelu(clip, tmp_path):
    from open_clip.transformer import QuickGELU

    # OpenAI's released state dicts are half precision and carry three metadata entries beside the weights.
    state = {key: value.half() for key, value in clip.model.state_dict().items()}
    state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    path = tmp_path / "openai_style.pt"
    torch.save(state, path)
    loaded = load_clip(model_cfg=TINY_CFG, checkpoint=path, device="cpu")
    assert loaded.provenance["quick_gelu"] is True
    assert isinstance(loaded.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    expected = clip.model.visual.proj.half().float()
    assert torch.equal(loaded.model.visual.proj, expected)
    assert loaded.model.visual.proj.dtype == torch.float32


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_torchscript_release_loads_like_openai_vit_b_16_pt(clip, tmp_path):
    # OpenAI's ViT-B-16.pt is a TorchScript archive; a traced tiny CLIP has the same structure.
    traced = torch.jit.trace_module(
        clip.model,
        {"encode_image": (random_images(1),), "encode_text": (torch.zeros(1, 77, dtype=torch.long),)},
        check_trace=False,
    )
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(traced, str(path))
    loaded = load_clip(model_cfg=TINY_CFG, checkpoint=path, device="cpu")
    assert_same_weights(clip.model, loaded.model)
    assert loaded.provenance["quick_gelu"] is True


def test_wrong_sha256_is_refused(clip, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(clip.model.state_dict(), path)
    with pytest.raises(CheckpointError, match="sha256") as error:
        load_clip(model_cfg=TINY_CFG, checkpoint=path, sha256="0" * 64, device="cpu")
    assert str(path) in str(error.value)


def test_missing_checkpoint_names_the_file_and_its_source(tmp_path):
    path = tmp_path / "ViT-B-16.pt"
    with pytest.raises(CheckpointError, match="not found") as error:
        load_clip("ViT-B-16", checkpoint=path, device="cpu")
    assert str(path) in str(error.value)
    assert "openaipublic" in str(error.value)


def test_checkpoint_of_another_architecture_is_refused(clip, tmp_path):
    state = clip.model.state_dict()
    del state["visual.proj"]
    path = tmp_path / "incomplete.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="visual.proj") as error:
        load_clip(model_cfg=TINY_CFG, checkpoint=path, device="cpu")
    assert str(path) in str(error.value)


# --------------------------------------------------------------------------------------------------- image input


def test_prepare_image_resizes_to_patch_multiples_and_normalises(clip):
    colour = np.array([255, 0, 51], dtype=np.uint8)
    image = np.broadcast_to(colour, (37, 50, 3)).copy()
    tensor = prepare_image(clip, image)
    # ceil(37 / 8) * 8 = 40, ceil(50 / 8) * 8 = 56; a flat colour stays flat under bicubic resizing
    assert tensor.shape == (1, 3, 40, 56)
    expected = [(1.0 - 0.48145466) / 0.26862954, (0.0 - 0.4578275) / 0.26130258, (0.2 - 0.40821073) / 0.27577711]
    for channel in range(3):
        assert torch.allclose(tensor[0, channel], torch.full((40, 56), expected[channel]), atol=1e-5)
    # scale 0.5: ceil(18.5 / 8) * 8 = 24, ceil(25 / 8) * 8 = 32
    assert prepare_image(clip, image, scale=0.5).shape == (1, 3, 24, 32)


def test_prepare_image_flip_mirrors_and_mean_std_override(clip):
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    image[:, :4] = 200  # a bright band on the left
    plain = prepare_image(clip, image)
    flipped = prepare_image(clip, image, flip=True)
    assert torch.equal(flipped, plain.flip(-1))
    assert flipped[0, 0, 0, -1] > flipped[0, 0, 0, 0]
    unnormalised = prepare_image(clip, image, mean=(0, 0, 0), std=(1, 1, 1))
    assert unnormalised.min() >= -1e-6 and unnormalised.max() <= 1 + 1e-6


def test_prepare_image_rejects_bad_arrays(clip):
    with pytest.raises(ValueError, match="uint8"):
        prepare_image(clip, np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        prepare_image(clip, np.zeros((8, 8), dtype=np.uint8))


# --------------------------------------------------------------------------------------------------- visual side


def test_block_by_block_equals_open_clip(clip, runner):
    images = random_images(2)
    trace = runner.forward(images)
    reference = clip.model.visual.forward_intermediates(images, output_fmt="NLC", output_extra_tokens=True)
    assert len(trace.tokens) == 3
    for layer, (prefix, patches) in enumerate(
        zip(reference["image_intermediates_prefix"], reference["image_intermediates"], strict=True)
    ):
        assert torch.allclose(trace.tokens[layer], torch.cat([prefix, patches], dim=1), atol=1e-5)
    image_embedding = runner.project(trace.tokens[-1])[:, 0]
    assert torch.allclose(image_embedding, clip.model.encode_image(images), atol=1e-5)


def test_recomputed_attention_equals_the_block_and_torch_weights(runner):
    x = torch.randn(2, 17, 64, generator=torch.Generator().manual_seed(1))
    for index, block in enumerate(runner.blocks):
        output, trace = runner.block(index, x, capture=True)
        assert torch.allclose(output, block(x), atol=1e-5)
        _, torch_weights = block.attn(trace.ln_1, trace.ln_1, trace.ln_1, need_weights=True, average_attn_weights=False)
        assert trace.attention.shape == (2, 4, 17, 17)
        assert torch.allclose(trace.attention, torch_weights, atol=1e-6)
        assert trace.q.shape == trace.k.shape == trace.v.shape == (2, 4, 17, 16)
        # the fused path (no capture) gives the same tokens without materialising the weights
        fused_output, fused_trace = runner.block(index, x)
        assert fused_trace.attention is None
        assert torch.allclose(fused_output, output, atol=1e-5)


def test_any_input_size_runs_with_the_right_token_count(runner):
    trace = runner.forward(random_images(1, 48, 80), capture_layers=[-1])
    assert trace.grid == (6, 10)
    assert all(tokens.shape == (1, 1 + 6 * 10, 64) for tokens in trace.tokens)
    assert trace.blocks[2].attention.shape == (1, 4, 61, 61)
    assert tokens_to_map(trace.tokens[-1], trace.grid).shape == (1, 64, 6, 10)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        runner.forward(random_images(1, 30, 32))


def test_positional_embedding_interpolation_by_hand():
    clip = load_clip(model_cfg=TINY_CFG, random_init=True, device="cpu")
    # native grid 4x4; every channel holds the column index, the CLS row holds 7
    ramp = torch.arange(4.0).repeat(4)
    clip.model.visual.positional_embedding.data[0] = 7.0
    clip.model.visual.positional_embedding.data[1:] = ramp.unsqueeze(1).expand(16, 64)
    runner = VisualRunner(clip)
    assert runner.positional_embedding((4, 4)) is runner.positional_embedding((4, 4))  # cached
    assert torch.equal(runner.positional_embedding((4, 4)), clip.model.visual.positional_embedding)
    wide = runner.positional_embedding((4, 8))
    assert wide.shape == (1 + 32, 64)
    assert torch.all(wide[0] == 7.0)
    # bilinear, align_corners=False, x2: output column i samples input column i/2 - 1/4, clamped at the borders
    expected_row = torch.tensor([0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0])
    for row in range(4):
        assert torch.allclose(wide[1 + 8 * row : 1 + 8 * (row + 1), 0], expected_row)


def test_attention_override_reimplementing_attention_changes_nothing(runner):
    images = random_images(2)
    plain = runner.forward(images)

    def standard(q, k, v, x):
        return attention_probabilities(q, k) @ v

    def uniform(q, k, v, x):  # every token attends to all tokens equally
        return v.mean(dim=2, keepdim=True).expand_as(v)

    same = runner.forward(images, attention_overrides={1: standard, 2: standard})
    changed = runner.forward(images, attention_overrides={2: uniform})
    assert torch.allclose(same.tokens[-1], plain.tokens[-1], atol=1e-5)
    assert (changed.tokens[-1] - plain.tokens[-1]).abs().max() > 1e-3
    assert torch.equal(changed.tokens[1], plain.tokens[1])  # blocks before the override are untouched


def test_override_sees_the_block_input_and_must_return_per_head_values(runner):
    x = torch.randn(1, 17, 64, generator=torch.Generator().manual_seed(2))
    seen = {}

    def record(q, k, v, block_input):
        seen["input"] = block_input
        return v

    runner.block(0, x, attention_override=record)
    assert seen["input"] is x
    with pytest.raises(ValueError, match="block 0"):
        runner.block(0, x, attention_override=lambda q, k, v, _: v.mean(dim=1))
    with pytest.raises(ValueError, match="not both"):
        runner.block(0, x, attention_override=record, attention_bias=torch.zeros(1))


def test_attention_bias(runner):
    images = random_images(1)
    plain = runner.forward(images)
    zero = runner.forward(images, attention_biases={-1: torch.zeros(1, 4, 17, 17)})
    assert torch.allclose(zero.tokens[-1], plain.tokens[-1], atol=1e-5)
    # a bias of -1e4 off the diagonal leaves each token attending only to itself
    self_only = torch.full((17, 17), -1e4).fill_diagonal_(0.0)
    biased = runner.forward(images, attention_biases={0: self_only}, capture_layers=[0])
    assert torch.allclose(biased.blocks[0].attention, torch.eye(17).expand(1, 4, 17, 17), atol=1e-6)
    assert (biased.tokens[-1] - plain.tokens[-1]).abs().max() > 1e-3


def test_gradients_start_at_the_chosen_layer(clip, runner):
    images = random_images(1)
    text = torch.randn(3, 32, generator=torch.Generator().manual_seed(3))
    trace = runner.forward(images, grad_from_layer=-1, capture_layers=range(-2, 0))
    last = trace.blocks[2]
    assert not trace.tokens[1].requires_grad  # layers before the last ran without grad
    assert last.input.requires_grad and last.input.is_leaf
    image_embedding = runner.project(trace.tokens[-1])[:, 1:].mean(dim=1)
    score = torch.nn.functional.normalize(image_embedding, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    (gradient,) = torch.autograd.grad(score[0, 1], last.ln_1)
    assert gradient.shape == (1, 17, 64)
    assert gradient.abs().sum() > 0
    assert all(parameter.grad is None for parameter in clip.model.parameters())


def test_grad_from_layer_overrides_a_callers_no_grad(runner):
    with torch.no_grad():
        trace = runner.forward(random_images(1), grad_from_layer=1)
    assert not trace.tokens[0].requires_grad
    assert trace.blocks[1].ln_1.requires_grad and trace.tokens[-1].requires_grad


def test_batches_and_repeats_give_the_same_tokens(runner):
    images = random_images(3)
    batched = runner.forward(images).tokens[-1]
    single = runner.forward(images[1:2]).tokens[-1]
    assert torch.allclose(batched[1:2], single, atol=1e-5)
    assert torch.equal(runner.forward(images).tokens[-1], batched)


def test_autocast_runs_in_low_precision_close_to_fp32(runner):
    images = random_images(1)
    full = runner.project(runner.forward(images).tokens[-1])
    trace = runner.forward(images, autocast_dtype=torch.bfloat16)
    low = runner.project(trace.tokens[-1].float())
    assert trace.blocks == {}
    assert torch.nn.functional.cosine_similarity(low.flatten(), full.flatten(), dim=0) > 0.99


def test_layer_indices_are_checked(runner):
    with pytest.raises(ValueError, match="layer index 3"):
        runner.forward(random_images(1), capture_layers=[3])


# ----------------------------------------------------------------------------------------------------- text side


def test_encode_text_matches_open_clip_in_any_batch_size(clip):
    prompts = ["a clean origami cat.", "a clean origami dog.", "sky", "a clean origami person with clothes.", "x"]
    embeddings = encode_text(clip, prompts, batch_size=2)
    with torch.no_grad():
        reference = clip.model.encode_text(clip.tokenizer(prompts), normalize=True)
    assert embeddings.shape == (5, 32)
    assert torch.allclose(embeddings, reference, atol=1e-5)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert not embeddings.requires_grad


def test_encode_text_rejects_a_bare_string(clip):
    with pytest.raises(ValueError, match="list of strings"):
        encode_text(clip, "a cat")


def test_text_from_token_embeddings_equals_encode_text(clip):
    token_ids = clip.tokenizer(["a photo of a cat.", "bird avian"])
    with torch.no_grad():
        embeddings = clip.model.token_embedding(token_ids)
        features = encode_text_embeddings(clip, embeddings, token_ids)
        reference = clip.model.encode_text(token_ids)
    assert torch.allclose(features, reference, atol=1e-5)
