"""Each retraining network builds from its params section and runs forward on tiny inputs of awkward sizes;
pretrained backbone weights load from a local file with their sha256, and bad files are named."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY_CLIP_CFG
from wsss_core.hashing import sha256_file
from wsss_core.models.checkpoints import CheckpointError
from wsss_core.params import validate_section
from wsss_core.params.schema import NETWORK_SECTIONS
from wsss_core.segment.networks import NETWORKS, build_network

TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2}
TINY_RESNET = [1, 1, 1, 1]


@pytest.fixture(scope="module")
def tiny_clip():
    from wsss_core.models.clip import load_clip

    return load_clip("tiny", model_cfg=TINY_CLIP_CFG, random_init=True, device="cpu")


def tiny_settings(name: str) -> dict:
    settings = validate_section({}, NETWORK_SECTIONS[name], name)  # the section's defaults
    if name == "deeplabv3plus":
        settings.update(blocks=TINY_RESNET, output_stride=16, random_init=True)
    if name == "weaktr":
        settings.update(encoder_cfg=TINY_VIT, random_init=True)
    if name == "weclip_head":
        settings.update(embedding_dim=32, heads=4)
    return settings


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_every_network_maps_any_image_size_to_logits_of_that_size(name, tiny_clip):
    network = build_network(name, tiny_settings(name), 5, clip=tiny_clip, device="cpu")
    module = network.module.eval()
    with torch.no_grad():
        logits = module(torch.randn(2, 3, 40, 56))  # not multiples of the patch size 16
    assert logits.shape == (2, 5, 40, 56) and torch.isfinite(logits).all()
    groups = module.parameter_groups()
    assert groups["head"] and set(groups) == {"backbone", "head"}
    assert len(network.mean) == 3 and len(network.std) == 3


@pytest.mark.parametrize("name", ["weclip_head", "weaktr"])  # DeepLabV3+ is built by the same seeded wrapper
def test_the_same_seed_builds_the_same_network(name, tiny_clip):
    first = build_network(name, tiny_settings(name), 3, clip=tiny_clip, device="cpu", seed=4).module.state_dict()
    again = build_network(name, tiny_settings(name), 3, clip=tiny_clip, device="cpu", seed=4).module.state_dict()
    other = build_network(name, tiny_settings(name), 3, clip=tiny_clip, device="cpu", seed=5).module.state_dict()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert any(not torch.equal(first[key], other[key]) for key in first)


def test_weclip_head_trains_only_the_head_on_a_frozen_clip(tiny_clip):
    settings = tiny_settings("weclip_head")
    network = build_network("weclip_head", settings, 4, clip=tiny_clip, device="cpu")
    module = network.module
    assert all(key.startswith("head.") for key in module.state_dict())  # CLIP is not saved with the head
    assert len(module.head.layer_mlps) == 3  # the tiny CLIP's three blocks, all of them by default
    clip_before = {k: v.clone() for k, v in tiny_clip.model.state_dict().items()}
    module.train()
    module(torch.randn(2, 3, 32, 48)).sum().backward()
    assert all(p.grad is not None for p in module.head.parameters())
    assert all(p.grad is None for p in tiny_clip.model.parameters())
    assert all(torch.equal(v, clip_before[k]) for k, v in tiny_clip.model.state_dict().items())
    last_two = build_network("weclip_head", {**settings, "feature_layers": 2}, 4, clip=tiny_clip, device="cpu")
    assert last_two.module.layer_indices == [1, 2]
    with pytest.raises(ValueError, match="feature_layers must lie in 1..3"):
        build_network("weclip_head", {**settings, "feature_layers": 4}, 4, clip=tiny_clip, device="cpu")


def test_backbones_refuse_to_go_random_silently():
    for name in ("deeplabv3plus", "weaktr"):
        settings = {**tiny_settings(name), "random_init": False, "checkpoint": None}
        with pytest.raises(CheckpointError, match=f"retrain.runs.r.{name}.checkpoint: no pretrained backbone weights"):
            build_network(name, settings, 3, device="cpu", key=f"retrain.runs.r.{name}")


def test_deeplab_loads_torchvision_resnet_weights_with_their_sha256(tmp_path):
    from wsss_core.models.compat import ensure_torchvision

    ensure_torchvision()
    from torchvision.models.resnet import Bottleneck, ResNet

    torch.manual_seed(3)
    imagenet = ResNet(Bottleneck, TINY_RESNET)  # what torchvision's resnet*.pth files hold, fc included
    path = tmp_path / "resnet.pth"
    torch.save(imagenet.state_dict(), path)
    settings = {**tiny_settings("deeplabv3plus"), "random_init": False, "checkpoint": str(path)}
    settings["sha256"] = sha256_file(path)
    network = build_network("deeplabv3plus", settings, 3, device="cpu")
    assert torch.equal(network.module.backbone.layer3[0].conv2.weight, imagenet.layer3[0].conv2.weight)
    assert network.checkpoints["resnet"] == {"path": str(path), "sha256": settings["sha256"]}

    with pytest.raises(CheckpointError, match="sha256 is"):
        build_network("deeplabv3plus", {**settings, "sha256": "0" * 64}, 3, device="cpu")
    state = imagenet.state_dict()
    del state["layer4.0.bn3.weight"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"not a ResNet of this depth: it lacks \['layer4.0.bn3.weight'\]"):
        build_network("deeplabv3plus", {**settings, "sha256": None}, 3, device="cpu")


def test_weaktr_loads_a_deit_style_checkpoint(tmp_path):
    from wsss_core.models.compat import ensure_torchvision

    ensure_torchvision()
    import timm

    torch.manual_seed(7)
    pretrained = timm.create_model("deit_small_patch16_224", pretrained=False, num_classes=10, **TINY_VIT)
    path = tmp_path / "deit.pth"
    torch.save({"model": pretrained.state_dict()}, path)  # DeiT releases wrap the weights, with a classifier head
    settings = {**tiny_settings("weaktr"), "random_init": False, "checkpoint": str(path)}
    network = build_network("weaktr", settings, 3, device="cpu")
    encoder = network.module.encoder
    assert torch.equal(encoder.blocks[1].attn.qkv.weight, pretrained.blocks[1].attn.qkv.weight)
    assert torch.equal(encoder.pos_embed, pretrained.pos_embed)
    assert network.checkpoints["vit"]["sha256"] == sha256_file(path)


def test_unknown_network_and_class_count_are_named():
    with pytest.raises(ValueError, match="unknown network 'unet'; expected one of"):
        build_network("unet", {}, 3)
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_network("deeplabv3plus", tiny_settings("deeplabv3plus"), 1)
