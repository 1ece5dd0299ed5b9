"""Segmentation losses against hand-computed values: CE with ignore, the bg/fg-balanced CE, WeakTr's clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsss_core.segment.losses import (
    balanced_cross_entropy,
    block_means,
    cross_entropy,
    gradient_clipping_loss,
    segmentation_loss,
)

LN3 = math.log(3.0)


def two_class_logits(values: list[list[float]]) -> torch.Tensor:
    """Logits (1, 2, H, W) whose cross entropy against label 1 is exactly `values` at each pixel.

    With logits [a, 0] and label 1, CE = log(1 + e^a); a = log(e^v - 1) gives CE = v.
    """
    g = torch.tensor(values, dtype=torch.float64)
    a = torch.log(torch.expm1(g))
    return torch.stack([a, torch.zeros_like(a)]).unsqueeze(0)


def test_cross_entropy_ignores_255_and_averages_labelled_pixels():
    # pixel 0: p = (3/4, 1/4), label 0 -> ln(4/3); pixel 1: same scores, label 1 -> ln 4; pixel 2 ignored
    logits = torch.tensor([[LN3, LN3, 5.0], [0.0, 0.0, 0.0]]).reshape(1, 2, 1, 3)
    labels = torch.tensor([[[0, 1, 255]]])
    assert cross_entropy(logits, labels).item() == pytest.approx((math.log(4 / 3) + math.log(4)) / 2, abs=1e-6)


def test_balanced_cross_entropy_averages_background_and_foreground_separately():
    # background: one pixel, CE ln(4/3); foreground: ln 4 and ln 2 (scores 0, 0) -> mean ln(8)/2
    logits = torch.tensor([[LN3, LN3, 0.0], [0.0, 0.0, 0.0]]).reshape(1, 2, 1, 3)
    labels = torch.tensor([[[0, 1, 1]]])
    expected = (math.log(4 / 3) + (math.log(4) + math.log(2)) / 2) / 2
    assert balanced_cross_entropy(logits, labels).item() == pytest.approx(expected, abs=1e-6)
    plain = (math.log(4 / 3) + math.log(4) + math.log(2)) / 3
    assert cross_entropy(logits, labels).item() == pytest.approx(plain, abs=1e-6)
    # Only foreground labelled: the loss is the foreground term alone, not NaN.
    only_fg = torch.tensor([[[255, 1, 1]]])
    assert balanced_cross_entropy(logits, only_fg).item() == pytest.approx(math.log(8) / 2, abs=1e-6)


def test_losses_without_labelled_pixels_are_zero_and_differentiable():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    labels = torch.full((1, 2, 2), 255)
    for name in ("ce", "balanced_ce", "gradient_clipping"):
        loss = segmentation_loss(name, logits, labels, tau=1.2, patch=2)
        assert loss.item() == 0.0
        loss.backward()
        assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_block_means_on_odd_sizes_average_each_tile_over_its_own_pixels():
    values = torch.arange(1.0, 10.0).reshape(3, 3)  # [[1,2,3],[4,5,6],[7,8,9]]
    means = block_means(values, torch.ones(3, 3), block=2)
    # tiles: {1,2,4,5} -> 3, {3,6} -> 4.5, {7,8} -> 7.5, {9} -> 9
    assert torch.equal(means, torch.tensor([[3.0, 3.0, 4.5], [3.0, 3.0, 4.5], [7.5, 7.5, 9.0]]))
    weights = torch.ones(3, 3)
    weights[0, 0] = 0  # a dropped pixel leaves its tile's mean: {2,4,5} -> 11/3
    assert block_means(values, weights, block=2)[1, 1].item() == pytest.approx(11 / 3)


def test_block_means_match_a_loop_over_tiles():
    rng = np.random.default_rng(0)
    values, weights = rng.random((5, 7)), (rng.random((5, 7)) > 0.3).astype(float)
    means = block_means(torch.tensor(values), torch.tensor(weights), block=3).numpy()
    for row in range(5):
        for col in range(7):
            tile = (slice(row // 3 * 3, row // 3 * 3 + 3), slice(col // 3 * 3, col // 3 * 3 + 3))
            count = weights[tile].sum()
            expected = (values[tile] * weights[tile]).sum() / count if count else 0.0
            assert means[row, col] == pytest.approx(expected)


GRID = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]  # per-pixel CE; mean 5


def test_no_clipping_while_the_mean_loss_is_above_tau():
    logits = two_class_logits(GRID).requires_grad_(True)
    result = gradient_clipping_loss(logits, torch.ones(1, 3, 3, dtype=torch.long), tau=4.9, patch=2)
    assert not result.clipping and result.unclipped_mean == pytest.approx(5.0)
    assert result.loss.item() == pytest.approx(5.0)
    result.loss.backward()
    assert (logits.grad[0, 0].abs() > 0).all()  # every pixel still learns


def test_clipping_below_tau_bounds_pixels_by_the_larger_of_local_and_global_mean():
    logits = two_class_logits(GRID).requires_grad_(True)
    result = gradient_clipping_loss(logits, torch.ones(1, 3, 3, dtype=torch.long), tau=5.0, patch=2)
    # thresholds max(tile mean, 5): 5, 5 (tile mean 4.5), 7.5, 9 -> 6 becomes 5 and 8 becomes 7.5
    assert result.clipping
    assert result.loss.item() == pytest.approx((1 + 2 + 3 + 4 + 5 + 5 + 7 + 7.5 + 9) / 9)
    expected_kept = torch.tensor([[True, True, True], [True, True, False], [True, False, True]])
    assert torch.equal(result.kept[0], expected_kept)
    result.loss.backward()
    grad = logits.grad[0].abs().sum(dim=0)
    assert grad[1, 2] == 0 and grad[2, 1] == 0  # clipped pixels get zero gradient
    assert (grad[expected_kept] > 0).all()


def test_clipped_loss_gradient_at_kept_pixels_equals_the_plain_loss_gradient():
    logits = two_class_logits(GRID).float()
    labels = torch.ones(1, 3, 3, dtype=torch.long)
    clipped = logits.clone().requires_grad_(True)
    gradient_clipping_loss(clipped, labels, tau=10.0, patch=2).loss.backward()
    plain = logits.clone().requires_grad_(True)
    cross_entropy(plain, labels).backward()
    kept = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    assert torch.allclose(clipped.grad[0][:, kept], plain.grad[0][:, kept])


def test_clipping_uses_batch_averaged_tiles_and_skips_ignored_pixels():
    # image 0: CE 1 everywhere; image 1: CE 3 everywhere except an ignored pixel that would otherwise count as 9.
    ce = [[[1.0, 1.0], [1.0, 1.0]], [[3.0, 3.0], [3.0, 9.0]]]
    logits = torch.cat([two_class_logits(image) for image in ce])
    labels = torch.ones(2, 2, 2, dtype=torch.long)
    labels[1, 1, 1] = 255
    result = gradient_clipping_loss(logits, labels, tau=5.0, patch=2)
    # lambda_global = (4 * 1 + 3 * 3) / 7 = 13/7; one tile, same mean -> threshold 13/7: every 3 is clipped to it
    assert result.unclipped_mean == pytest.approx(13 / 7)
    assert result.loss.item() == pytest.approx((4 * 1 + 3 * 13 / 7) / 7)
    assert result.kept[0].all() and not result.kept[1].any()


def test_gradient_clipping_loss_runs_on_sizes_that_are_not_multiples_of_the_patch():
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(2, 4, 37, 53)), dtype=torch.float32, requires_grad=True)
    labels = torch.tensor(rng.integers(0, 4, size=(2, 37, 53)))
    result = gradient_clipping_loss(logits, labels, tau=100.0, patch=16)
    assert result.clipping and 0 < result.kept.float().mean() < 1
    assert result.loss.item() <= cross_entropy(logits, labels).item()
    result.loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_bad_arguments_are_named():
    logits, labels = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="tau must be >= 0"):
        gradient_clipping_loss(logits, labels, tau=-1.0)
    with pytest.raises(ValueError, match="do not fit"):
        cross_entropy(logits, torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown segmentation loss 'dice'"):
        segmentation_loss("dice", logits, labels, 1.2, 120)
