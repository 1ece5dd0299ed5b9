"""FMA-WSSS prompt-learning maths on hand-checkable inputs: losses, learning-rate schedule, batch sampling and
augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsss_core.drivers.learn import TrainSettings, learning_rate
from wsss_core.prompts.batches import AugmentSettings, augment, color_jitter, rescale, sample_indices
from wsss_core.prompts.losses import (
    cam_activation_loss,
    multilabel_bce_loss,
    multilabel_contrastive_loss,
    pixel_bce_loss,
)

E = math.e

# ------------------------------------------------------------------------------------- multi-label contrastive (12)


def test_contrastive_loss_single_positive_by_hand():
    # present class 0 against absent 1 and 2: log(e^2 + e^0 + e^1) - 2
    loss = multilabel_contrastive_loss(torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([[1, 0, 0]]))
    assert loss.item() == pytest.approx(math.log(E**2 + 1 + E) - 2, abs=1e-6)  # 0.407606
    assert loss.item() == pytest.approx(0.407606, abs=1e-6)


def test_present_classes_do_not_compete_and_the_mean_runs_over_all_positives():
    # image 2: classes 0 and 1 present, each contrasted with absent class 2 only (not with each other):
    #   log(e^1 + e^0) - 1 = 0.313262,  log(e^3 + e^0) - 3 = 0.048587
    # images 3 (every class present) and 4 (none) have no anchor pair and are skipped.
    logits = torch.tensor([[2.0, 0.0, 1.0], [1.0, 3.0, 0.0], [5.0, 5.0, 5.0], [9.0, 9.0, 9.0]])
    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0]])
    expected = (0.407606 + math.log(E + 1) - 1 + math.log(E**3 + 1) - 3) / 3
    assert multilabel_contrastive_loss(logits, labels).item() == pytest.approx(expected, abs=1e-6)  # 0.256485
    softmax_ce = -torch.log_softmax(logits[1], 0)[:2].mean()  # what a plain softmax over all classes would give
    assert abs(multilabel_contrastive_loss(logits[1:2], labels[1:2]).item() - softmax_ce.item()) > 0.1


def test_contrastive_loss_is_stable_at_clip_logit_scale_and_zero_without_anchors():
    logits = torch.tensor([[100.0, 0.0], [0.0, 100.0]], requires_grad=True)
    loss = multilabel_contrastive_loss(logits, torch.tensor([[1, 0], [1, 0]]))
    assert loss.item() == pytest.approx(50.0, abs=1e-4)  # (log(e^100 + 1) - 100 + log(1 + e^100) - 0) / 2
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    empty = multilabel_contrastive_loss(logits, torch.ones(2, 2))
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match=r"must both be \(B, C\)"):
        multilabel_contrastive_loss(logits, torch.ones(2, 3))


def test_bce_loss_by_hand():
    # -log sigmoid(0) = ln 2; -log(1 - sigmoid(ln 3)) = -log(1/4) = ln 4; mean over the two entries
    loss = multilabel_bce_loss(torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[1, 0]]))
    assert loss.item() == pytest.approx((math.log(2) + math.log(4)) / 2, abs=1e-6)  # 1.039721


# --------------------------------------------------------------------------------------------- CAM activation (13-15)


def test_cam_activation_loss_by_hand_and_its_gradient():
    # seed [[1, 1], [0, 255]] for class 1: foreground pixels 0.5, -0.2 -> peak 0.5; terms |0.5-0.5| + |0.5+0.2| = 0.7
    # background pixel 0.1 -> 0.1; the ignored pixel counts nowhere; 3 labelled pixels -> (0.7 + 0.1) / 3
    cams = torch.tensor([[[0.5, -0.2], [0.1, 0.3]]], requires_grad=True)
    seeds = torch.tensor([[[1, 1], [0, 255]]])
    loss = cam_activation_loss(cams, seeds, torch.tensor([1]))
    assert loss.item() == pytest.approx(0.8 / 3, abs=1e-6)
    loss.backward()
    # detached peak: its own pixel is not pulled down; the low foreground pixel is pushed up, the positive
    # background pixel down, the ignored pixel left alone
    torch.testing.assert_close(cams.grad, torch.tensor([[[0.0, -1 / 3], [1 / 3, 0.0]]]))


def test_cam_activation_loss_clamps_the_peak_at_zero_and_sums_over_maps():
    # map 1 (class 1): foreground -0.4, -0.1 -> peak max(-0.1, 0) = 0 -> 0.4 + 0.1; background relu(0.2), relu(0)
    # map 2 (class 2, no seed pixels of its own): all four pixels background -> relu: 0.3 + 0.1
    cams = torch.tensor([[[-0.4, -0.1], [0.2, 0.0]], [[0.3, -0.5], [0.1, -0.1]]])
    seeds = torch.tensor([[[1, 1], [0, 0]], [[1, 1], [0, 0]]])
    loss = cam_activation_loss(cams, seeds, torch.tensor([1, 2]))
    assert loss.item() == pytest.approx((0.5 + 0.2 + 0.4) / 8, abs=1e-6)


def test_cam_activation_loss_upsamples_the_cam_to_the_seeds():
    # a 1x1 CAM of 0.3 upsamples to 0.3 everywhere: foreground |0.3 - 0.3| = 0, three background pixels 0.3 each
    loss = cam_activation_loss(torch.full((1, 1, 1), 0.3), torch.tensor([[[1, 0], [0, 0]]]), torch.tensor([1]))
    assert loss.item() == pytest.approx(0.9 / 4, abs=1e-6)
    nothing = cam_activation_loss(torch.ones(1, 2, 2), torch.full((1, 2, 2), 255), torch.tensor([1]))
    assert nothing.item() == 0.0
    with pytest.raises(ValueError, match="class_ids"):
        cam_activation_loss(torch.ones(2, 2, 2), torch.zeros(2, 2, 2, dtype=torch.long), torch.tensor([1]))


def test_pixel_bce_loss_by_hand():
    # sigmoid(0) on a class pixel: ln 2; sigmoid(ln 3) = 3/4 on a background pixel: ln 4; the 255 pixel is skipped
    cams = torch.tensor([[[0.0, math.log(3.0), 7.0]]])
    loss = pixel_bce_loss(cams, torch.tensor([[[1, 0, 255]]]), torch.tensor([1]))
    assert loss.item() == pytest.approx((math.log(2) + math.log(4)) / 2, abs=1e-6)


# ------------------------------------------------------------------------------------------------------- schedule


def test_learning_rate_warm_up_then_cosine():
    settings = TrainSettings(iterations=10, lr=1.0, warmup_iterations=2, warmup_lr=0.01)
    rates = [learning_rate(i, settings) for i in range(10)]
    assert rates[:2] == [0.01, 0.01]
    assert rates[2] == pytest.approx(1.0)
    assert rates[7] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 8)))  # 0.308658
    assert rates[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))  # 0.038060
    assert all(a >= b for a, b in zip(rates[2:], rates[3:], strict=False))
    with pytest.raises(ValueError, match="stop_after"):
        TrainSettings(iterations=10, stop_after=11)
    with pytest.raises(ValueError, match="unknown loss"):
        TrainSettings(iterations=10, loss="dice")


# ---------------------------------------------------------------------------------------------- batches, augment


def test_sample_indices_are_per_epoch_permutations_and_can_start_anywhere():
    stream = sample_indices(5, seed=3, start=0, count=15)
    for epoch in range(3):
        assert sorted(stream[5 * epoch : 5 * epoch + 5].tolist()) == [0, 1, 2, 3, 4]
    assert not np.array_equal(stream[:5], stream[5:10])  # epochs are shuffled anew
    np.testing.assert_array_equal(sample_indices(5, seed=3, start=4, count=7), stream[4:11])
    assert not np.array_equal(sample_indices(5, seed=4, start=0, count=15), stream)


def test_rescale_brings_the_long_side_into_range_unless_the_short_side_gets_too_short():
    rng = np.random.default_rng(0)
    tall = np.zeros((100, 50, 3), dtype=np.uint8)
    # long side to 120 would make the short side 60 < 80, so the short side becomes 80: factor 1.6
    image, label = rescale(
        tall, np.zeros((100, 50), np.uint8), rng, AugmentSettings(long_side=(120, 120), min_short_side=80, crop=80)
    )
    assert image.shape == (160, 80, 3) and label.shape == (160, 80)
    wide = np.zeros((40, 80, 3), dtype=np.uint8)
    image, _ = rescale(wide, None, rng, AugmentSettings(long_side=(160, 160), min_short_side=32, crop=32))
    assert image.shape == (80, 160, 3)  # long side 160, short side 80 >= 32
    with pytest.raises(ValueError, match="min_short_side 16 must be >= crop 32"):
        AugmentSettings(min_short_side=16, crop=32)


def test_augment_keeps_labels_on_their_pixels():
    # left half red with label 1, right half blue with label 2; without colour jitter every crop and flip must keep
    # the labels on their colours (nearest-neighbour labels, bicubic image: only the seam may disagree)
    image = np.zeros((60, 80, 3), dtype=np.uint8)
    image[:, :40, 0] = 255
    image[:, 40:, 2] = 255
    label = np.ones((60, 80), dtype=np.uint8)
    label[:, 40:] = 2
    settings = AugmentSettings(color_jitter=False, long_side=(96, 128), min_short_side=64, crop=64)
    flipped = 0
    for seed in range(8):
        out, out_label = augment(image, label, np.random.default_rng(seed), settings)
        assert out.shape == (64, 64, 3) and out_label.shape == (64, 64)
        red = out[..., 0].astype(int) > out[..., 2].astype(int)
        assert ((red & (out_label == 1)) | (~red & (out_label == 2))).mean() > 0.95
        flipped += bool(out_label[:, 0].mean() > out_label[:, -1].mean())
    assert 0 < flipped < 8  # some crops were flipped, some not


def test_color_jitter_is_reproducible_and_changes_colours():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    first = color_jitter(image, np.random.default_rng(5))
    np.testing.assert_array_equal(first, color_jitter(image, np.random.default_rng(5)))
    changed = [not np.array_equal(color_jitter(image, np.random.default_rng(s)), image) for s in range(6)]
    assert first.dtype == np.uint8 and first.shape == image.shape and any(changed)
