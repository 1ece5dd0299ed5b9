"""PAR (wsss_core/refine/par.py): the neighbourhood, the weights on hand-checkable cases, the 1.01 quirk, and what
refinement must do (follow image edges, act linearly and per item, ignore the colour scale)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsss_core.refine.par import (
    DILATIONS,
    RING,
    dilated_neighbours,
    par_refine,
    par_weights,
    place_weights,
)


def test_neighbours_are_the_ring_at_each_dilation_with_replicated_borders():
    grid = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5)
    neighbours = dilated_neighbours(grid, (1, 2, 7))  # 7: past the image from every pixel
    assert neighbours.shape == (1, 1, 24, 5, 5)
    values = grid[0, 0].numpy()
    for k, (d, (dy, dx)) in enumerate((d, offset) for d in (1, 2, 7) for offset in RING):
        for row in range(5):
            for col in range(5):
                expected = values[min(max(row + dy * d, 0), 4), min(max(col + dx * d, 0), 4)]
                assert neighbours[0, 0, k, row, col] == expected, (d, dy, dx, row, col)


def test_place_weights_by_hand():
    # one dilation: edge neighbours at distance 1, diagonal ones at sqrt(2), in the ring's order
    distances = np.array([math.sqrt(2) if dy and dx else 1.0 for dy, dx in RING])
    logits = -((distances / distances.std(ddof=1) / 0.3) ** 2)
    expected = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(place_weights((1,)).numpy(), expected, rtol=1e-5, atol=1e-7)  # diagonals ~1e-99
    weights = place_weights(DILATIONS)
    assert weights.shape == (48,) and abs(float(weights.sum()) - 1) < 1e-6
    assert weights[0] < weights[1] and weights[:8].sum() > weights[-8:].sum()  # nearer neighbours weigh more


def test_colour_weights_by_hand_on_a_tiny_image():
    rng = np.random.default_rng(0)
    image = rng.random((1, 3, 4, 5)).astype(np.float32)
    weights = par_weights(torch.from_numpy(image), (4, 5), (1, 2)).numpy()[0]  # (16, 4, 5)
    place = place_weights((1, 2)).numpy()
    for row, col in [(0, 0), (1, 2), (3, 4)]:
        neighbours = np.array(
            [image[0, :, min(max(row + dy * d, 0), 3), min(max(col + dx * d, 0), 4)] for d in (1, 2) for dy, dx in RING]
        )  # (16, 3)
        centre = image[0, :, row, col]
        logits = (-((np.abs(neighbours - centre) / (neighbours.std(axis=0, ddof=1) + 1e-8) / 0.3) ** 2)).mean(axis=1)
        colour = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose(weights[:, row, col], colour + 0.01 * place, rtol=1e-5, atol=1e-7)


def test_weights_sum_to_1_01_so_a_constant_map_grows_by_1_01_per_iteration():
    image = torch.rand(2, 3, 12, 10, generator=torch.Generator().manual_seed(1))
    weights = par_weights(image, (12, 10))
    torch.testing.assert_close(weights.sum(dim=1), torch.full((2, 12, 10), 1.01))
    constant = torch.full((2, 1, 12, 10), 0.5)
    torch.testing.assert_close(par_refine(image, constant, iterations=3), constant * 1.01**3)
    torch.testing.assert_close(par_refine(image, constant, iterations=0), constant)


def test_refinement_follows_an_image_edge():
    # left half dark, right half bright; the map is 1 on the left half only
    image = torch.zeros(1, 3, 16, 16)
    image[..., 8:] = 1.0
    image += 0.01 * torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    step = torch.zeros(1, 1, 16, 16)
    step[..., :8] = 1.0
    refined = par_refine(image, step)[0, 0]
    assert refined[:, 8:].max() < 0.05 and refined[:, :8].min() > 1.0  # no leak across the edge (x 1.01**20)
    flat = par_refine(torch.zeros(1, 3, 16, 16), step)[0, 0]  # a flat image lets the map spread
    assert flat[:, 8:].max() > 0.3


def test_linear_per_channel_and_per_item():
    gen = torch.Generator().manual_seed(3)
    images, maps = torch.rand(2, 3, 20, 24, generator=gen), torch.rand(2, 4, 10, 12, generator=gen)
    refined = par_refine(images, maps)
    torch.testing.assert_close(refined[1:], par_refine(images[1:], maps[1:]))
    torch.testing.assert_close(refined[:, 2:3], par_refine(images, maps[:, 2:3]))
    mixed = par_refine(images, 2 * maps[:, :1] - 0.5 * maps[:, 1:2])
    torch.testing.assert_close(mixed, 2 * refined[:, :1] - 0.5 * refined[:, 1:2], atol=1e-5, rtol=1e-5)


def test_images_are_resized_to_the_maps_and_their_colour_scale_does_not_matter():
    gen = torch.Generator().manual_seed(4)
    images, maps = torch.rand(1, 3, 32, 40, generator=gen), torch.rand(1, 2, 16, 20, generator=gen)
    small = torch.nn.functional.interpolate(images, size=(16, 20), mode="bilinear", align_corners=True)
    torch.testing.assert_close(par_refine(images, maps), par_refine(small, maps))
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    torch.testing.assert_close(par_refine((images - mean) / std, maps), par_refine(images, maps), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(par_refine(images * 255, maps), par_refine(images, maps), atol=1e-5, rtol=1e-5)


def test_bad_shapes_and_settings_are_named():
    images, maps = torch.rand(1, 3, 8, 8), torch.rand(1, 2, 8, 8)
    with pytest.raises(ValueError, match="maps must be shaped"):
        par_refine(images, maps[0])
    with pytest.raises(ValueError, match="batch size"):
        par_refine(torch.rand(2, 3, 8, 8), maps)
    with pytest.raises(ValueError, match="dilations"):
        par_refine(images, maps, dilations=(0, 1))
    with pytest.raises(ValueError, match="iterations"):
        par_refine(images, maps, iterations=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(5)
    images, maps = torch.rand(2, 3, 40, 30, generator=gen), torch.rand(2, 3, 20, 15, generator=gen)
    on_gpu = par_refine(images.cuda(), maps.cuda())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), par_refine(images, maps), atol=1e-5, rtol=1e-5)
