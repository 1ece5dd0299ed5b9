"""Training (schedule, batches, augmentation, resume), inference (views, sliding windows) and post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_segment_networks import tiny_clip, tiny_settings  # noqa: F401 (fixture)
from wsss_core.segment.infer import InferenceSettings, predict_probabilities, sliding_logits, window_starts
from wsss_core.segment.losses import cross_entropy
from wsss_core.segment.networks import build_network
from wsss_core.segment.postprocess import postprocess
from wsss_core.segment.train import (
    OptimizerSettings,
    TrainSettings,
    batch_indices,
    lr_factor,
    make_batch,
    make_optimizer,
    random_crop,
    train,
)


class Killed(Exception):
    """Stands for the process being killed part-way through training."""


class Squares:
    """Tiny training pairs: a red (class 1) or blue (class 2) square on grey; its border pixels are ignored."""

    def __init__(self, n: int = 4, size: int = 48) -> None:
        rng = np.random.default_rng(0)
        self.pairs = []
        for index in range(n):
            image = np.full((size, size, 3), 128, dtype=np.uint8)
            labels = np.zeros((size, size), dtype=np.uint8)
            top, left = rng.integers(0, size // 2, size=2)
            cls = 1 + index % 2
            image[top : top + 20, left : left + 20] = (220, 30, 30) if cls == 1 else (30, 30, 220)
            labels[top : top + 20, left : left + 20] = cls
            labels[top, left : left + 20] = 255
            self.pairs.append((image, labels))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        return self.pairs[index]


MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_warmup_then_poly_schedule():
    # 10 updates, 2 warm-up from ratio 0.1, power 1: 0.1, 0.55, then 1 - step/10
    factors = [lr_factor(step, 10, 2, 0.1, 1.0) for step in range(10)]
    assert factors == pytest.approx([0.1, 0.55, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    assert lr_factor(5, 10, 0, 0.0, 0.9) == pytest.approx(0.5**0.9)
    with pytest.raises(ValueError, match="step 10 outside 0..9"):
        lr_factor(10, 10, 2, 0.1, 1.0)


def test_batches_cover_every_image_once_per_epoch_and_depend_only_on_seed_and_step():
    epoch = [index for step in range(3) for index in batch_indices(step, 2, 6, seed=0)]
    assert sorted(epoch) == list(range(6))
    assert batch_indices(4, 2, 6, seed=0) == batch_indices(4, 2, 6, seed=0)
    assert [batch_indices(s, 2, 6, seed=1) for s in range(3)] != [batch_indices(s, 2, 6, seed=0) for s in range(3)]


def test_random_crop_pads_small_images_with_ignored_pixels():
    image = np.zeros((10, 20, 3), dtype=np.uint8)
    image[..., 0] = 255
    labels = np.ones((10, 20), dtype=np.uint8)
    rng = np.random.default_rng(0)
    tensor, target = random_crop(image, labels, 32, (1.0, 1.0), False, rng, MEAN, STD)
    assert tensor.shape == (3, 32, 32) and target.shape == (32, 32)
    assert (target == 1).sum() == 200 and (target == 255).sum() == 32 * 32 - 200
    assert torch.allclose(tensor[:, target == 255], torch.zeros(1))  # padding is the mean colour
    assert torch.allclose(tensor[0, target == 1], torch.tensor((1.0 - 0.5) / 0.25))
    # rescaling keeps labels as labels (nearest): no new values appear
    _, scaled = random_crop(image, labels * 3, 16, (0.5, 2.0), True, np.random.default_rng(1), MEAN, STD)
    assert set(torch.unique(scaled).tolist()) <= {3, 255}


def test_optimizer_groups_get_their_learning_rate_multipliers(tiny_clip):  # noqa: F811
    module = build_network("weaktr", tiny_settings("weaktr"), 3, device="cpu").module
    optimizer = make_optimizer(module, OptimizerSettings(kind="sgd", lr=0.1, backbone_lr_scale=0.1, nesterov=True))
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == pytest.approx({"backbone": 0.01, "head": 0.1})
    frozen = make_optimizer(module, OptimizerSettings(backbone_lr_scale=0.0))
    assert [group["name"] for group in frozen.param_groups] == ["head"]
    assert not any(p.requires_grad for p in module.encoder.parameters())


def settings_for(iterations: int, **changes) -> TrainSettings:
    base = dict(
        iterations=iterations,
        batch_size=2,
        crop_size=32,
        scale_range=(0.75, 1.25),
        warmup_iterations=2,
        warmup_ratio=0.1,
        checkpoint_every=2,
        loss="balanced_ce",
    )
    return TrainSettings(**{**base, **changes})


def test_a_few_training_steps_reduce_the_loss(tiny_clip, tmp_path):  # noqa: F811
    data = Squares()
    network = build_network("weclip_head", tiny_settings("weclip_head"), 3, clip=tiny_clip, device="cpu")
    fixed = settings_for(1, batch_size=4, crop_size=48, scale_range=(1.0, 1.0), flip=False)
    images, labels = make_batch(data, 0, fixed, MEAN, STD)

    def fixed_batch_loss() -> float:
        network.module.eval()
        with torch.no_grad():
            return cross_entropy(network.module(images), labels).item()

    before = fixed_batch_loss()
    curve = train(
        network.module,
        data,
        settings_for(16, warmup_iterations=0, checkpoint_every=16),
        OptimizerSettings(lr=5e-4, head_lr_scale=10.0, weight_decay=0.0),
        mean=MEAN,
        std=STD,
        device="cpu",
        work_dir=tmp_path,
    )
    assert [row["step"] for row in curve] == list(range(1, 17))
    assert fixed_batch_loss() < 0.5 * before


@pytest.mark.parametrize("name", ["weclip_head", "weaktr"])
def test_resume_after_a_kill_equals_an_uninterrupted_run(name, tiny_clip, tmp_path):  # noqa: F811
    data = Squares()
    settings = settings_for(4, loss="gradient_clipping" if name == "weaktr" else "balanced_ce", clip_tau=10.0)
    optimizer = OptimizerSettings(kind="sgd" if name == "weaktr" else "adamw", lr=1e-3, nesterov=True)

    def run(work_dir, on_step=None):
        network = build_network(name, tiny_settings(name), 3, clip=tiny_clip, device="cpu")
        kwargs = dict(mean=MEAN, std=STD, device="cpu", work_dir=work_dir, on_step=on_step)
        return network.module, train(network.module, data, settings, optimizer, **kwargs)

    reference, reference_curve = run(tmp_path / "straight")

    def killed_after_three(step):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        run(tmp_path / "killed", killed_after_three)
    resumed_steps = []
    resumed, resumed_curve = run(tmp_path / "killed", resumed_steps.append)
    assert resumed_steps == [3, 4]  # restarted from the checkpoint after step 2
    assert resumed_curve == reference_curve
    expected = reference.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in resumed.state_dict().items())


class PixelwiseNet(torch.nn.Module):
    """A 1x1 convolution: every pixel's logits depend on that pixel alone, so windows and flips cannot change them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, images):
        return self.conv(images)


def test_window_starts_cover_the_image_with_the_last_window_flush():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(4, 8, 3) == [0]


def test_sliding_windows_and_flips_leave_a_pixelwise_network_unchanged():
    net = PixelwiseNet().eval()
    images = torch.randn(1, 3, 23, 37)
    with torch.no_grad():
        whole = net(images)
        windowed = sliding_logits(net, images, window=16, stride=10)
    assert torch.allclose(windowed, whole, atol=1e-6)
    image = np.random.default_rng(0).integers(0, 256, size=(23, 37, 3), dtype=np.uint8)
    single = predict_probabilities(net, image, MEAN, STD, InferenceSettings(), "cpu")
    views = predict_probabilities(net, image, MEAN, STD, InferenceSettings(flip=True, window=16, stride=8), "cpu")
    assert single.shape == (4, 23, 37) and np.allclose(single.sum(axis=0), 1.0, atol=1e-5)
    assert np.allclose(views, single, atol=1e-5)
    multi = predict_probabilities(net, image, MEAN, STD, InferenceSettings(scales=(0.5, 1.0, 1.5)), "cpu")
    assert multi.shape == single.shape and not np.allclose(multi, single)
    with pytest.raises(ValueError, match="0 < stride <= window"):
        InferenceSettings(window=16, stride=0)


class RecordingNet(torch.nn.Module):
    """A 3x3 convolution (flipping the image changes its logits) that records the size of every batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.sizes = []

    def forward(self, images):
        self.sizes.append(tuple(images.shape[-2:]))
        return self.conv(images)


def excel_reference(net, image, scales, side):
    """ExCEL's VOC inference (tools/infer_seg_voc.py), restated: square views of side * scale, the flip pair in one
    batch, logits resized to the image and averaged per scale (scale 1.0: the unflipped view alone), then over the
    scales; one softmax at the end."""
    import torch.nn.functional as F

    from wsss_core.segment.train import normalise

    inputs = normalise(image, MEAN, STD).unsqueeze(0)
    height, width = image.shape[:2]
    segs = []
    with torch.no_grad():
        for scale in scales:
            size = int(side * scale)
            view = F.interpolate(inputs, size=[size, size], mode="bilinear", align_corners=False)
            both = F.interpolate(net(torch.cat([view, view.flip(-1)])), size=(height, width), mode="bilinear")
            segs.append(both[:1] if scale == 1.0 else (both[:1] + both[1:].flip(-1)) / 2)
    return torch.softmax(torch.stack(segs).mean(dim=0), dim=1)[0].numpy()


def test_excel_inference_square_views_averaged_logits_and_an_unflipped_scale():
    net = RecordingNet().eval()
    image = np.random.default_rng(1).integers(0, 256, size=(23, 37, 3), dtype=np.uint8)
    settings = InferenceSettings(
        scales=(0.75, 1.0, 1.5), flip=True, unflipped_scales=(1.0,), resize="square", input_size=32, merge="logits"
    )
    ours = predict_probabilities(net, image, MEAN, STD, settings, "cpu")
    assert net.sizes == [(24, 24), (24, 24), (32, 32), (48, 48), (48, 48)]  # no mirror image at scale 1.0
    assert ours.shape == (4, 23, 37) and np.allclose(ours.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_allclose(ours, excel_reference(net, image, (0.75, 1.0, 1.5), 32), atol=1e-5)
    softmax = predict_probabilities(
        net, image, MEAN, STD, InferenceSettings(**{**settings.__dict__, "merge": "softmax"}), "cpu"
    )
    assert not np.allclose(softmax, ours, atol=1e-4)  # averaging probabilities is another thing
    with pytest.raises(ValueError, match="resize must be one of keep_aspect, square"):
        InferenceSettings(resize="long_side")
    with pytest.raises(ValueError, match="merge must be one of softmax, logits"):
        InferenceSettings(merge="max")


def test_postprocessing_none_and_crf():
    probabilities = np.zeros((3, 8, 8), dtype=np.float32)
    probabilities[0] = 0.6
    probabilities[2, 2:6, 2:6] = 0.9
    probabilities[1, 0, 0] = 0.7
    labels = postprocess(probabilities, "none")
    assert labels.dtype == np.uint8 and labels[3, 3] == 2 and labels[0, 0] == 1 and labels[7, 7] == 0
    image = np.full((8, 8, 3), 100, dtype=np.uint8)
    image[2:6, 2:6] = 200
    refined = postprocess(probabilities, "crf", image=image, crf_options={"iterations": 5})
    assert refined.shape == (8, 8) and 255 not in refined  # final predictions keep a class everywhere
    assert refined[3, 3] == 2 and refined[7, 7] == 0 and refined[0, 0] == 0  # the lone pixel is smoothed away
    with pytest.raises(ValueError, match="needs the image's SAM masks"):
        postprocess(probabilities, "sams")
    with pytest.raises(ValueError, match="unknown post-processing 'dilate'"):
        postprocess(probabilities, "dilate")


def test_sams_postprocessing_paints_whole_masks_with_the_predicted_classes():
    from wsss_core.masks.records import ImageMasks

    probabilities = np.zeros((3, 8, 8), dtype=np.float32)
    probabilities[0] = 0.55
    probabilities[1, :, :2], probabilities[1, :, 2], probabilities[1, :, 3] = 0.9, 0.6, 0.2
    probabilities[1, :, 4:] = 0.1
    probabilities[2, 0, 7] = 0.3  # class 2 never wins a pixel, so it takes no part
    halves = np.zeros((2, 8, 8), dtype=bool)
    halves[0, :, :4], halves[1, :, 4:] = True, True
    masks = ImageMasks(halves, level=[2, 2], score=[0.9, 0.9])
    assert (postprocess(probabilities, "none")[:, 3] == 0).all()  # the argmax loses column 3 to background
    labels = postprocess(probabilities, "sams", masks=masks, alpha=1.0)
    # per-mask class-1 means 0.65 and 0.1, min-max -> 1 and 0; background (1 - 1)^1 = 0 and 1: left half is class 1
    assert (labels[:, :4] == 1).all() and (labels[:, 4:] == 0).all()
