"""Dense-CRF seeds on small synthetic images with flat colour regions."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pydensecrf")

from wsss_core.seeding.crf import crf_refine, crf_seeds  # noqa: E402

HEIGHT, WIDTH = 16, 21
RED, BLUE, GREY = (220, 40, 40), (40, 40, 220), (128, 128, 128)


def stripes(*colours: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Image with vertical stripes of the given colours, and the stripe index of every pixel."""
    stripe = (np.arange(WIDTH) * len(colours) // WIDTH)[None].repeat(HEIGHT, axis=0)
    image = np.asarray(colours, dtype=np.uint8)[stripe]
    return np.ascontiguousarray(image), stripe


def noisy_two_class_probs(truth: np.ndarray, seed: int = 0) -> np.ndarray:
    """0.7 / 0.3 in favour of the true class, with about 15% of the pixels flipped."""
    rng = np.random.default_rng(seed)
    favour_one = np.where(truth == 1, 0.7, 0.3)
    favour_one = np.where(rng.random(truth.shape) < 0.15, 1 - favour_one, favour_one)
    return np.stack([1 - favour_one, favour_one]).astype(np.float32)


def test_crf_cleans_noise_along_colour_regions():
    image, truth = stripes(RED, BLUE)
    probs = noisy_two_class_probs(truth)
    assert (probs.argmax(axis=0) != truth).sum() > 20  # the input really is noisy
    labels, crf_probs = crf_refine(image, probs)
    assert labels.dtype == np.uint8 and crf_probs.dtype == np.float32 and crf_probs.shape == probs.shape
    np.testing.assert_array_equal(labels, truth)
    np.testing.assert_allclose(crf_probs.sum(axis=0), 1.0, atol=1e-5)


def test_confidence_threshold_marks_exactly_the_unsure_pixels():
    image, truth = stripes(RED, BLUE)
    labels, crf_probs = crf_refine(image, noisy_two_class_probs(truth), confidence=0.99)
    unsure = crf_probs.max(axis=0) < 0.99
    assert unsure.any() and not unsure.all()
    np.testing.assert_array_equal(labels[unsure], 255)
    np.testing.assert_array_equal(labels[~unsure], truth[~unsure])


def test_uniform_probs_stay_uniform_and_are_ignored():
    # Equal unaries give every class the same message, so the CRF keeps 1/3 everywhere: below 0.95 -> 255.
    image, _ = stripes(RED, BLUE, GREY)
    labels, crf_probs = crf_refine(image, np.full((3, HEIGHT, WIDTH), 0.4, dtype=np.float32))
    np.testing.assert_allclose(crf_probs, 1 / 3, atol=1e-6)
    assert (labels == 255).all()


def test_crf_seeds_maps_indices_to_class_ids():
    image, stripe = stripes(GREY, RED, BLUE)
    rng = np.random.default_rng(1)
    cams = np.stack([stripe == 1, stripe == 2]).astype(np.float32) * 0.8 + rng.uniform(0, 0.2, (2, HEIGHT, WIDTH))
    bg_score = 1 - cams.max(axis=0)
    seeds = crf_seeds(image, cams, [15, 7], bg_score)
    assert seeds.dtype == np.uint8
    np.testing.assert_array_equal(seeds, np.array([0, 15, 7], dtype=np.uint8)[stripe])

    # Same pixels as crf_refine on the un-normalised stack [bg, cams], index k -> [0, 15, 7][k], 255 kept.
    indices, _ = crf_refine(image, np.concatenate([bg_score[None], cams]).astype(np.float32), confidence=0.999)
    strict = crf_seeds(image, cams, [15, 7], bg_score, confidence=0.999)
    np.testing.assert_array_equal(strict, np.array([0, 15, 7] + [255] * 253, dtype=np.uint8)[indices])


def test_crf_seeds_without_classes_is_all_background():
    image, _ = stripes(RED, BLUE)
    seeds = crf_seeds(image, np.zeros((0, HEIGHT, WIDTH), np.float32), [], np.ones((HEIGHT, WIDTH), np.float32))
    assert seeds.shape == (HEIGHT, WIDTH) and (seeds == 0).all()


def test_bad_inputs_raise_clear_errors():
    image, truth = stripes(RED, BLUE)
    probs = noisy_two_class_probs(truth)
    with pytest.raises(ValueError, match="uint8"):
        crf_refine(image.astype(np.float32), probs)
    with pytest.raises(ValueError, match="match the image"):
        crf_refine(image, probs[:, :-1])
    with pytest.raises(ValueError, match="non-negative"):
        crf_refine(image, probs - 1)
    with pytest.raises(ValueError, match="class_ids"):
        crf_seeds(image, probs, [0, 3], probs[0])
    with pytest.raises(ValueError, match="duplicates"):
        crf_seeds(image, probs, [3, 3], probs[0])
    with pytest.raises(ValueError, match="bg_score"):
        crf_seeds(image, probs, [1, 2], probs[0, :-1])


def test_label_unary_sees_only_the_argmax_at_gt_prob():
    """WeakTr's CRF: the unary is each pixel's argmax at gt_prob and the other classes at (1 - gt_prob) / (K - 1),
    however confident the scores were; it cleans noisy labels along colour regions too."""
    image, truth = stripes(RED, BLUE)
    probs = noisy_two_class_probs(truth)
    labels, crf_probs = crf_refine(image, probs, unary="labels", gt_prob=0.7, confidence=0.0)
    np.testing.assert_array_equal(labels, truth)
    sharpened = np.where(probs > 0.5, 0.99, 0.01).astype(np.float32)  # same argmax, other scores: same result
    _, same = crf_refine(image, sharpened, unary="labels", gt_prob=0.7, confidence=0.0)
    np.testing.assert_allclose(same, crf_probs, atol=1e-6)
    _, score_probs = crf_refine(image, sharpened, confidence=0.0)  # the default unary does see the scores
    assert not np.allclose(score_probs, crf_probs, atol=1e-3)
    # with one class there is nothing to decide
    only, only_probs = crf_refine(image, probs[:1], unary="labels")
    assert (only == 0).all() and only_probs.shape == (1, HEIGHT, WIDTH)


def test_unknown_unary_and_gt_prob_out_of_range_are_refused():
    image, truth = stripes(RED, BLUE)
    probs = noisy_two_class_probs(truth)
    with pytest.raises(ValueError, match="unary must be scores or labels, got 'soft'"):
        crf_refine(image, probs, unary="soft")
    with pytest.raises(ValueError, match=r"gt_prob must be in \(0, 1\), got 1.0"):
        crf_refine(image, probs, unary="labels", gt_prob=1.0)
