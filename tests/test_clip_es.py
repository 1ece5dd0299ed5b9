"""CLIP-ES CAM generation on a tiny random CLIP: shapes, ranges, determinism, batched == per-class backward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import TINY_CLIP_CFG
from wsss_core.cam.clip_es import ClipEs, ClipEsSettings, upsample_cams
from wsss_core.models.clip import load_clip
from wsss_core.prompts import CLIP_ES_BACKGROUND_VOC, CLIP_ES_TEMPLATE, prompts_for

NAMES = ["disc", "square", "triangle", "star"]


@pytest.fixture(scope="module")
def clip():
    return load_clip("tiny", model_cfg=TINY_CLIP_CFG, random_init=True, device="cpu", seed=1)


def generator(clip, **settings) -> ClipEs:
    settings.setdefault("caa_layers", 2)
    return ClipEs(
        clip,
        prompts_for(NAMES, CLIP_ES_TEMPLATE),
        prompts_for(CLIP_ES_BACKGROUND_VOC, CLIP_ES_TEMPLATE),
        ClipEsSettings(**settings),
    )


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, size=(40, 72, 3), dtype=np.uint8)


def test_cams_live_on_the_ceil_token_grid(clip, image):
    result = generator(clip)(image, [1, 3])
    assert result.class_ids == [1, 3]
    assert result.raw.shape == result.refined.shape == (2, 3, 5)  # ceil(40/16), ceil(72/16)
    for maps in (result.raw, result.refined):
        assert maps.min() >= 0 and maps.max() <= 1
        assert torch.allclose(maps.flatten(1).max(dim=1).values, torch.ones(2), atol=1e-3)  # min-max per class


def test_batched_backward_equals_one_backward_per_class(clip, image):
    batched = generator(clip)(image, [1, 2, 4])
    looped = generator(clip, batched_gradients=False)(image, [1, 2, 4])
    assert torch.allclose(batched.raw, looped.raw, atol=1e-5)
    # CAA min-maxes a matrix product of the CAM, which scales float rounding up by about 10x
    assert torch.allclose(batched.refined, looped.refined, atol=1e-3)


def test_deterministic(clip, image):
    cams = generator(clip)
    first, second = cams(image, [2]), cams(image, [2])
    assert torch.equal(first.raw, second.raw) and torch.equal(first.refined, second.refined)


def test_present_classes_change_the_softmax(clip, image):
    cams = generator(clip)
    alone = cams(image, [1]).raw[0]
    with_other = cams(image, [1, 2]).raw[0]
    assert not torch.allclose(alone, with_other)  # softmax runs over present fg + background only


def test_multi_scale_and_flip_are_fused_on_the_base_grid(clip, image):
    single = generator(clip)(image, [1])
    fused = generator(clip, scales=(1.0, 1.5), flip=True)(image, [1])
    assert fused.raw.shape == single.raw.shape
    assert not torch.allclose(fused.raw, single.raw)


def test_feature_affinity_source_changes_only_the_refined_cams(clip, image):
    by_attention = generator(clip)(image, [1, 3])
    by_features = generator(clip, affinity_source="features")(image, [1, 3])
    assert torch.equal(by_features.raw, by_attention.raw)
    assert not torch.allclose(by_features.refined, by_attention.refined)
    assert by_features.refined.min() >= 0 and by_features.refined.max() <= 1
    with pytest.raises(ValueError, match="affinity_source must be one of .* got 'keys'"):
        ClipEsSettings(affinity_source="keys")


def test_no_classes_and_bad_classes(clip, image):
    empty = generator(clip)(image, [])
    assert empty.raw.shape == (0, 3, 5)
    with pytest.raises(ValueError, match=r"class ids \[5\] are outside 1\.\.4"):
        generator(clip)(image, [5])


def test_upsample_cams_to_image_size():
    grid = np.array([[[0.0, 1.0], [1.0, 0.0]]], dtype=np.float32)
    full = upsample_cams(grid, (4, 4))
    assert full.shape == (1, 4, 4)
    assert full[0, 0, 0] == 0.0 and full[0, 0, 3] == 1.0  # corners keep the grid's values (align_corners=False)
    assert np.allclose(full[0], full[0].T[::-1, ::-1])
    assert upsample_cams(np.zeros((0, 2, 2), np.float32), (4, 4)).shape == (0, 4, 4)
