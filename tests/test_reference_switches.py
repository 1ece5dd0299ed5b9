"""Switches that make the presets repeat the reference code's details (CLIP-ES, FMA-WSSS), on tiny random CLIPs.

The comparisons with the reference code itself need its checkout (shared/fidelity oracles) and do not run here;
these tests pin what each switch does, independently of the project's own helpers where that is possible.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tests.conftest import TINY_CLIP_CFG
from tests.test_clip_es import NAMES
from tests.test_clip_es import generator as clip_es
from wsss_core.cam import learned
from wsss_core.cam.caa import box_mask, caa_refine
from wsss_core.cam.clip_es import ClipEsSettings
from wsss_core.cam.gradcam import clip_es_minmax, minmax, softmax_gradcam, softmax_gradcam_loop
from wsss_core.cam.learned import LearnedCamSettings, LearnedPromptCams
from wsss_core.models.clip import ClipModel, load_clip
from wsss_core.models.clip_visual import VisualRunner
from wsss_core.prompts.fma import FmaPrompts


@pytest.fixture(scope="module")
def clip() -> ClipModel:
    return load_clip("tiny", model_cfg=TINY_CLIP_CFG, random_init=True, device="cpu", seed=1)


@pytest.fixture(scope="module")
def fp16_clip(clip) -> ClipModel:
    """The tiny CLIP with every weight rounded to a float16 value, as OpenAI's released checkpoints are."""
    rounded = copy.copy(clip)
    rounded.model = copy.deepcopy(clip.model)
    with torch.no_grad():
        for parameter in rounded.model.parameters():
            parameter.copy_(parameter.half().float())
    return rounded


def image_of(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------- defaults stay as they were


def test_defaults_keep_todays_behaviour():
    clip_es_defaults = ClipEsSettings()
    assert clip_es_defaults.gradcam_normalization == "once"
    assert clip_es_defaults.fp16_positional_embedding is False
    assert clip_es_defaults.reference_quirks is False
    assert LearnedCamSettings().reference_quirks is False
    with pytest.raises(ValueError, match="gradcam normalization must be one of .* got 'twice'"):
        ClipEsSettings(gradcam_normalization="twice")
    assert dataclasses.replace(clip_es_defaults, gradcam_normalization="clip_es").gradcam_normalization == "clip_es"


# ------------------------------------------------------------------------------------- CLIP-ES Grad-CAM normalisation


def numpy_scale_cam_image(maps: np.ndarray) -> np.ndarray:
    """CLIP-ES's scale_cam_image without resizing, restated in numpy float32: x - min, then / (1e-7 + max)."""
    out = []
    for img in maps.astype(np.float32):
        img = img - np.min(img)
        img = img / (np.float32(1e-7) + np.max(img))
        out.append(img)
    return np.float32(out)


def numpy_clip_es_normalisation(cams: np.ndarray) -> np.ndarray:
    """What CLIP-ES's BaseCAM does to the raw CAM of one target layer: ReLU, scale_cam_image (compute_cam_per_layer),
    ReLU, mean over the one layer, scale_cam_image again (aggregate_multi_layers)."""
    first = numpy_scale_cam_image(np.maximum(cams, 0).astype(np.float32))
    stacked = np.maximum(first[:, None], 0)  # (P, layers=1, h, w)
    return numpy_scale_cam_image(np.mean(stacked, axis=1))


def test_clip_es_normalisation_is_the_double_min_max_and_differs_from_once_on_near_flat_maps():
    rng = np.random.default_rng(0)
    maps = [
        np.zeros((5, 6)),  # flat at zero
        np.full((5, 6), 0.25),  # flat, positive
        -rng.random((5, 6)) - 0.1,  # all negative: zeros after the ReLU
        1.0 + 1e-7 * rng.random((5, 6)),  # near flat: range ~1e-7, like a tiny model's raw CAM
        3e-8 * rng.random((5, 6)),
        rng.normal(size=(5, 6)),  # ordinary ranges
        40.0 * rng.random((5, 6)),
    ]
    cams = torch.from_numpy(np.stack(maps).astype(np.float32))
    ours = clip_es_minmax(cams.clamp_min(0), (-2, -1))
    expected = numpy_clip_es_normalisation(cams.numpy())
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-6, atol=1e-7)
    assert torch.isfinite(ours).all()  # both passes carry the epsilon: no NaN or inf, even on flat maps
    assert torch.equal(ours[:3], torch.zeros(3, 5, 6))  # flat maps stay all zeros, as in the reference

    once = minmax(cams.clamp_min(0), (-2, -1))
    gap = (ours - once).abs().amax(dim=(-2, -1))
    assert (gap[3:5] > 0.1).all()  # near flat: one pass tops out well below 1, the second stretches it to ~1
    assert ours[3:5].amax(dim=(-2, -1)).allclose(torch.ones(2), atol=1e-3)
    assert (gap[5:] < 1e-6).all()  # ordinary ranges: the passes agree to float precision


def linear_example(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear 'model' logits = W @ mean(A[1:]) with patch tokens that differ by `scale` (near flat when tiny)."""
    generator = torch.Generator().manual_seed(0)
    patches = torch.tensor([3.0, 1.0, -2.0]) + scale * torch.randn(12, 3, generator=generator)
    activations = torch.cat([torch.randn(1, 3, generator=generator), patches]).requires_grad_(True)
    weights = torch.tensor([[1.0, 0.5, 0.0], [0.0, -1.0, 2.0], [-0.5, 0.0, 1.0]])
    return activations, weights @ activations[1:].mean(dim=0)


@pytest.mark.parametrize("gradcam", [softmax_gradcam, softmax_gradcam_loop])
def test_gradcam_clip_es_normalisation_applies_to_the_relu_cam(gradcam):
    activations, logits = linear_example(scale=1e-6)  # CAM range ~1e-7: where the two normalisations part
    raw = gradcam(activations, logits, [0, 2], (3, 4), relu=False, normalize=False, retain_graph=True)
    once = gradcam(activations, logits, [0, 2], (3, 4), retain_graph=True)
    clip_es_cams = gradcam(activations, logits, [0, 2], (3, 4), normalization="clip_es", retain_graph=True)
    expected = numpy_clip_es_normalisation(raw.detach().numpy())
    np.testing.assert_allclose(clip_es_cams.numpy(), expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(once, minmax(raw.clamp_min(0), (-2, -1)))  # the default is untouched
    assert (clip_es_cams - once).abs().max() > 0.05
    with pytest.raises(ValueError, match="gradcam normalization must be one of"):
        gradcam(activations, logits, [0], (3, 4), normalization="twice")


def test_clip_es_generator_min_maxes_the_once_map_a_second_time(clip):
    image = image_of(40, 72)
    once = clip_es(clip)(image, [1, 3])
    twice = clip_es(clip, gradcam_normalization="clip_es")(image, [1, 3])
    # same forward and gradients; the second min-max pass is the only difference in the raw map
    assert torch.equal(twice.raw, minmax(once.raw, (-2, -1)))
    assert twice.raw.amax(dim=(-2, -1)).allclose(torch.ones(2), atol=1e-6)
    assert torch.isfinite(twice.refined).all() and twice.refined.min() >= 0 and twice.refined.max() <= 1


# ---------------------------------------------------------------------------------- fp16 positional embedding


def test_fp16_positional_embedding_rounds_only_interpolated_rows_of_fp16_weights(fp16_clip):
    plain, rounded = VisualRunner(fp16_clip), VisualRunner(fp16_clip, fp16_positional_embedding=True)
    assert plain.fp16_positional_embedding is False
    native = tuple(fp16_clip.model.visual.grid_size)
    parameter = fp16_clip.model.visual.positional_embedding
    assert torch.equal(rounded.positional_embedding(native), parameter)  # native grid: the weights themselves
    assert torch.equal(plain.positional_embedding(native), parameter)
    for grid in [(3, 5), (5, 5), (2, 7)]:  # non-square and square grids other than the native 4x4
        exact = plain.positional_embedding(grid)
        # the default is today's fp32 bilinear resize, computed here independently
        patch_map = parameter[1:].reshape(1, *native, -1).permute(0, 3, 1, 2)
        resized = F.interpolate(patch_map, size=grid, mode="bilinear", align_corners=False)
        assert torch.equal(exact[1:], resized.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1))
        half = rounded.positional_embedding(grid)
        assert half.dtype == exact.dtype == torch.float32
        assert torch.equal(half, exact.to(torch.float16).to(torch.float32))  # CLIP-ES's emb.half()
        assert torch.equal(half, half.half().float())  # every value exactly representable in fp16
        assert torch.equal(half[0], exact[0])  # CLS row: already an fp16 value
        assert not torch.equal(half[1:], exact[1:])  # interpolated rows lose precision
        assert (half - exact).abs().max() <= exact.abs().max() * 2**-11


def test_fp16_positional_embedding_rounds_every_row_like_the_reference_for_fp32_weights(clip):
    rounded = VisualRunner(clip, fp16_positional_embedding=True)
    parameter = clip.model.visual.positional_embedding
    native = tuple(clip.model.visual.grid_size)
    # CLIP-ES rounds the whole embedding at every grid; random fp32 weights are not fp16 values, so even the
    # native grid changes (OpenAI's weights are, and do not)
    assert torch.equal(rounded.positional_embedding(native), parameter.half().float())
    assert not torch.equal(rounded.positional_embedding(native), parameter)


def test_clip_es_fp16_switch_changes_only_images_off_the_native_grid(fp16_clip):
    default, rounded = clip_es(fp16_clip), clip_es(fp16_clip, fp16_positional_embedding=True)
    assert rounded.runner.fp16_positional_embedding and not default.runner.fp16_positional_embedding
    native = image_of(64, 64, seed=3)  # 4x4 tokens: the model's own grid
    same_a, same_b = default(native, [2, 4]), rounded(native, [2, 4])
    assert torch.equal(same_a.raw, same_b.raw) and torch.equal(same_a.refined, same_b.refined)
    wide = image_of(40, 72, seed=3)  # 3x5 tokens: interpolated
    wide_a, wide_b = default(wide, [2, 4]), rounded(wide, [2, 4])
    assert not torch.equal(wide_a.raw, wide_b.raw)
    torch.testing.assert_close(wide_a.raw, wide_b.raw, atol=0.05, rtol=0)  # a rounding, not another model


# ------------------------------------------------------------------------------- learned-prompt CAA reference quirks


@pytest.fixture(scope="module")
def prompts(clip):
    return FmaPrompts(clip, "csc_prepend", NAMES[:2], ["sky", "grass", "water"], n_ctx=2)


@pytest.mark.parametrize("refine", ["score", "cam"])
def test_learned_cams_pass_reference_quirks_to_caa(clip, prompts, refine, monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        result = caa_refine(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    monkeypatch.setattr(learned, "caa_refine", spy)
    image = image_of(40, 56, seed=1)  # -> 48x64, a 3x4 token grid
    results = {}
    for quirks in (False, True):
        settings = LearnedCamSettings(caa_layers=2, box_threshold=0.5, refine=refine, reference_quirks=quirks)
        results[quirks] = LearnedPromptCams(clip, prompts, settings)(image, [1, 2])
    (plain_args, plain_kwargs, _), (args, kwargs, propagated) = calls
    assert plain_kwargs["reference_quirks"] is False and kwargs["reference_quirks"] is True
    score = kwargs["box_source"]
    assert torch.equal(score, results[True].raw)  # boxes from the normalised score, in [0, 1] as the quirk needs
    if refine == "cam":
        assert args[0].min() < 0  # the raw CAM is refined; only its box source must lie in [0, 1]
    expected = caa_refine(args[0], args[1], box_threshold=0.5, box_source=score, normalize=False, reference_quirks=True)
    assert torch.equal(propagated, expected)
    assert torch.equal(results[True].refined, minmax(expected.clamp_min(0), (-2, -1)))
    # on a 3x4 grid nearly every box touches the right or bottom border, which the quirk clips
    quirky_boxes = box_mask(score, 0.5, reference_quirks=True)
    assert not torch.equal(quirky_boxes, box_mask(score, 0.5))
    assert not torch.equal(results[True].refined, results[False].refined)
    assert torch.equal(results[True].raw, results[False].raw)
