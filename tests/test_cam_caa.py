"""CAA: Sinkhorn normalisation, box masks, attention affinity and CAM refinement on hand-checkable inputs."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from wsss_core.cam.caa import attention_affinity, box_mask, caa_refine, feature_affinity, sinkhorn_normalize
from wsss_core.cam.gradcam import minmax


def as_tensor(rows) -> torch.Tensor:
    return torch.tensor([[float(value) for value in row] for row in rows])


# ---- Sinkhorn ----


def test_sinkhorn_one_round_2x2():
    # Column sums (4, 6): [[1/4, 1/3], [3/4, 2/3]]; row sums (7/12, 17/12): [[3/7, 4/7], [9/17, 8/17]].
    result = sinkhorn_normalize(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), rounds=1)
    torch.testing.assert_close(result, torch.tensor([[3 / 7, 4 / 7], [9 / 17, 8 / 17]]))


def test_sinkhorn_one_round_3x3():
    # Column sums (4, 4, 4): [[1/4, 0, 1/4], [1/2, 1/2, 0], [1/4, 1/2, 3/4]]; row sums (1/2, 1, 3/2).
    attention = torch.tensor([[1.0, 0.0, 1.0], [2.0, 2.0, 0.0], [1.0, 2.0, 3.0]])
    expected = torch.tensor([[1 / 2, 0.0, 1 / 2], [1 / 2, 1 / 2, 0.0], [1 / 6, 1 / 3, 1 / 2]])
    torch.testing.assert_close(sinkhorn_normalize(attention, rounds=1), expected)


def test_sinkhorn_many_rounds_is_nearly_doubly_stochastic():
    attention = torch.rand(6, 6, generator=torch.Generator().manual_seed(0)) + 0.05
    result = sinkhorn_normalize(attention, rounds=50)
    torch.testing.assert_close(result.sum(dim=1), torch.ones(6))
    torch.testing.assert_close(result.sum(dim=0), torch.ones(6), atol=1e-4, rtol=0)
    assert not torch.allclose(sinkhorn_normalize(attention, rounds=1).sum(dim=0), torch.ones(6), atol=1e-4)


def test_sinkhorn_rejects_bad_input():
    assert torch.equal(
        sinkhorn_normalize(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), rounds=0), as_tensor([[1, 2], [3, 4]])
    )
    with pytest.raises(ValueError, match="non-negative"):
        sinkhorn_normalize(torch.tensor([[1.0, -2.0], [3.0, 4.0]]))
    with pytest.raises(ValueError, match="all-zero"):
        sinkhorn_normalize(torch.tensor([[1.0, 0.0], [3.0, 0.0]]))


# ---- box masks ----

TWO_BLOBS = as_tensor(
    [
        [0, 0.9, 0, 0, 0, 0],
        [0, 0, 0.8, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1.0, 0],
        [0, 0, 0, 0, 0, 0.6],
        [0.3, 0, 0, 0, 0, 0],
    ]
)
# Each blob is two diagonal neighbours (one 8-connected region); the 0.3 pixel is below 0.4 * max.
TWO_BOXES = as_tensor(
    [
        [0, 1, 1, 0, 0, 0],
        [0, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 0, 0],
    ]
).bool()


def test_box_mask_union_of_two_boxes():
    assert torch.equal(box_mask(TWO_BLOBS, 0.4), TWO_BOXES)


def test_box_mask_threshold_is_relative_and_strict():
    assert torch.equal(box_mask(TWO_BLOBS * 10, 0.4), TWO_BOXES)
    # 0.6 is not above 0.6 * 1.0: the second blob shrinks to its single 1.0 pixel.
    expected = TWO_BOXES.clone()
    expected[3:5, 4:6] = False
    expected[3, 4] = True
    assert torch.equal(box_mask(TWO_BLOBS, 0.6), expected)
    # A low threshold lets the 0.3 pixel in as its own 1x1 box.
    low = TWO_BOXES.clone()
    low[5, 0] = True
    assert torch.equal(box_mask(TWO_BLOBS, 0.2), low)


def test_box_mask_all_zero_map_is_empty():
    assert not box_mask(torch.zeros(6, 6), 0.4).any()


def test_box_mask_stack_matches_scipy_components():
    ndimage = pytest.importorskip("scipy.ndimage")
    maps = torch.rand(5, 9, 11, generator=torch.Generator().manual_seed(0)) ** 3
    masks = box_mask(maps, 0.4)
    for single, mask in zip(maps, masks, strict=True):
        labels, _ = ndimage.label((single > 0.4 * single.max()).numpy(), structure=[[1, 1, 1]] * 3)
        expected = torch.zeros_like(mask)
        for rows, cols in ndimage.find_objects(labels):
            expected[rows, cols] = True
        assert torch.equal(mask, expected)
        assert torch.equal(box_mask(single, 0.4), mask)


def test_box_mask_reference_quirks():
    # Border clipping: the second blob's box touches neither border, so move it to the bottom-right corner.
    corner = torch.zeros(6, 6)
    corner[4, 4], corner[5, 5] = 1.0, 0.7
    assert box_mask(corner, 0.4)[4:, 4:].all()
    quirky = box_mask(corner, 0.4, reference_quirks=True)
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[4, 4] = True  # rows 4..5 and cols 4..5 lose their last row and column
    assert torch.equal(quirky, expected)
    # 8-bit quantisation: floor(0.402 * 255) = 102 is not above int(0.4 * 255) = 102.
    near = torch.zeros(3, 3)
    near[0, 0], near[1, 1] = 1.0, 0.402
    assert box_mask(near, 0.4)[1, 1]
    assert not box_mask(near, 0.4, reference_quirks=True)[1, 1]


# ---- attention affinity ----


def three_token_attention() -> torch.Tensor:
    """(L=2, heads=2, 3, 3): after head and layer averaging the patch block is [[1, 2], [3, 4]]; CLS is 100."""
    attention = torch.full((2, 2, 3, 3), 100.0)
    attention[0, 0, 1:, 1:] = torch.tensor([[0.0, 2.0], [2.0, 4.0]])
    attention[0, 1, 1:, 1:] = torch.tensor([[2.0, 2.0], [4.0, 4.0]])
    attention[1, :, 1:, 1:] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    return attention


def test_attention_affinity_three_tokens_by_hand():
    # One Sinkhorn round of [[1, 2], [3, 4]] is [[3/7, 4/7], [9/17, 8/17]]; symmetrised off-diagonal
    # (4/7 + 9/17) / 2 = 131/238; then T @ T in exact fractions.
    a, b, d = Fraction(3, 7), Fraction(131, 238), Fraction(8, 17)
    squared = [[a * a + b * b, a * b + b * d], [b * a + d * b, b * b + d * d]]
    expected = torch.tensor([[float(value) for value in row] for row in squared])
    affinity = attention_affinity(three_token_attention(), rounds=1, power=2)
    torch.testing.assert_close(affinity, expected)
    once = attention_affinity(three_token_attention(), rounds=1, power=1)
    torch.testing.assert_close(once, torch.tensor([[float(a), float(b)], [float(b), float(d)]]))


def test_attention_affinity_symmetric_and_power_is_matrix_product():
    generator = torch.Generator().manual_seed(0)
    attention = torch.rand(3, 4, 4, 4, generator=generator).softmax(dim=-1)  # 3 patch tokens + CLS
    once = attention_affinity(attention, power=1)
    torch.testing.assert_close(once, once.T)
    torch.testing.assert_close(attention_affinity(attention, power=2), once @ once)
    torch.testing.assert_close(attention_affinity(attention, power=3), once @ once @ once)
    torch.testing.assert_close(attention_affinity(attention.mean(dim=1)), attention_affinity(attention))
    # CLS row and column take no part.
    changed = attention.clone()
    changed[:, :, 0, :] = 7.0
    changed[:, :, :, 0] = 7.0
    torch.testing.assert_close(attention_affinity(changed), attention_affinity(attention))


def test_attention_affinity_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        attention_affinity(torch.rand(4, 4))
    with pytest.raises(ValueError, match="square"):
        attention_affinity(torch.rand(2, 4, 5))


def two_layer_tokens() -> torch.Tensor:
    """(2 layers, CLS + 3 patches, 2 channels). Layer 1: cos(p1, p2) = 1/sqrt 2, cos(p1, p3) = -1, cos(p2, p3) =
    -1/sqrt 2. Layer 2: p1 and p3 parallel, p2 orthogonal to both. The CLS token points anywhere."""
    layer_1 = torch.tensor([[5.0, -3.0], [1.0, 0.0], [2.0, 2.0], [-1.0, 0.0]])
    layer_2 = torch.tensor([[-2.0, 9.0], [3.0, 0.0], [0.0, 1.0], [0.5, 0.0]])
    return torch.stack([layer_1, layer_2])


def test_feature_affinity_by_hand():
    # Mean over layers of max(cos, 0): (1,2) (1/sqrt 2 + 0) / 2, (1,3) (0 + 1) / 2, (2,3) 0; squared (beta 2).
    # No Sinkhorn round and power 1 leave the symmetric similarity as it is.
    expected = torch.tensor([[1.0, 1 / 8, 1 / 4], [1 / 8, 1.0, 0.0], [1 / 4, 0.0, 1.0]])
    affinity = feature_affinity(two_layer_tokens(), rounds=0, power=1, beta=2.0)
    torch.testing.assert_close(affinity, expected)


def test_feature_affinity_goes_through_the_attention_pipeline():
    tokens = two_layer_tokens()
    similarity = torch.tensor([[1.0, 1 / 8, 1 / 4], [1 / 8, 1.0, 0.0], [1 / 4, 0.0, 1.0]])
    as_attention = torch.ones(1, 4, 4)
    as_attention[0, 1:, 1:] = similarity
    torch.testing.assert_close(
        feature_affinity(tokens, rounds=3, power=2, beta=2.0), attention_affinity(as_attention, rounds=3, power=2)
    )
    # Cosine similarity ignores token norms; CLS takes no part.
    rescaled = tokens * torch.tensor([7.0, 0.5, 3.0, 2.0]).view(1, 4, 1)
    rescaled[:, 0] = torch.tensor([0.0, -4.0])
    torch.testing.assert_close(feature_affinity(rescaled, beta=2.0), feature_affinity(tokens, beta=2.0))


def test_feature_affinity_keeps_groups_apart_and_beta_sharpens():
    # Two groups of patch tokens in orthogonal directions, with a little spread inside each group.
    generator = torch.Generator().manual_seed(0)
    group_a = torch.tensor([1.0, 0.0, 0.0, 0.0]) + 0.3 * torch.rand(3, 4, generator=generator)
    group_b = torch.tensor([0.0, 0.0, 1.0, 0.0]) + 0.3 * torch.rand(3, 4, generator=generator)
    group_a[:, 2:] = 0  # exactly orthogonal to group b
    group_b[:, :2] = 0
    tokens = torch.cat([torch.ones(1, 4), group_a, group_b])[None]
    affinity = feature_affinity(tokens, rounds=3, power=2, beta=8.0)
    assert torch.count_nonzero(affinity[:3, 3:]) == 0 and torch.count_nonzero(affinity[3:, :3]) == 0
    # A larger beta moves more of a row's weight onto the patch itself.
    soft = feature_affinity(tokens, rounds=0, power=1, beta=1.0)
    sharp = feature_affinity(tokens, rounds=0, power=1, beta=8.0)
    soft_rows, sharp_rows = soft / soft.sum(1, keepdim=True), sharp / sharp.sum(1, keepdim=True)
    assert (sharp_rows.diagonal() > soft_rows.diagonal()).all()


def test_feature_affinity_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        feature_affinity(torch.rand(4, 3))
    with pytest.raises(ValueError, match="beta"):
        feature_affinity(torch.rand(1, 4, 3), beta=0.0)


# ---- refinement ----


def test_caa_identity_affinity_keeps_cam_inside_box():
    cam = torch.tensor([[[0.0, 0.2, 0.0], [0.1, 1.0, 0.5], [0.0, 0.0, 0.3]]])
    # Above 0.4: 1.0 and 0.5, neighbours in row 1 -> box row 1, cols 1..2; everything else is dropped.
    refined = caa_refine(cam, torch.eye(9), box_threshold=0.4)
    torch.testing.assert_close(refined, torch.tensor([[[0.0, 0.0, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]]))


SPREAD = torch.tensor(
    [[0.5, 0.5, 0.0, 0.0], [0.5, 0.25, 0.25, 0.0], [0.0, 0.25, 0.25, 0.5], [0.0, 0.0, 0.5, 0.5]]
)  # symmetric, rows sum to 1: each patch averages itself with its neighbours on a 1x4 grid


def test_caa_masks_columns_so_mass_spreads_out_of_the_box():
    cam = torch.tensor([[[0.2, 1.0, 0.5, 0.0]]])
    # Box: columns 1..2. Masked CAM (0, 1, 0.5, 0); T @ it = (0.5, 0.375, 0.375, 0.25): patch 0 lies outside the
    # box yet receives mass, while its own 0.2 is not propagated.
    raw = caa_refine(cam, SPREAD, box_threshold=0.4, normalize=False)
    torch.testing.assert_close(raw, torch.tensor([[[0.5, 0.375, 0.375, 0.25]]]))
    torch.testing.assert_close(caa_refine(cam, SPREAD), torch.tensor([[[1.0, 0.5, 0.5, 0.0]]]))


def test_caa_box_source_for_raw_cams():
    raw_cam = torch.tensor([[[2.0, -1.0, 3.0, 0.0]]])
    score = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])  # box: column 0 only
    refined = caa_refine(raw_cam, SPREAD, box_threshold=0.5, box_source=score, normalize=False)
    torch.testing.assert_close(refined, torch.tensor([[[1.0, 1.0, 0.0, 0.0]]]))


def test_caa_vectorised_equals_per_class_loop():
    generator = torch.Generator().manual_seed(0)
    cams = minmax(torch.rand(3, 5, 6, generator=generator) ** 2, (-2, -1))
    # Peaked attention: near-uniform attention gives a near-constant refined map that min-max blows up.
    affinity = attention_affinity((8 * torch.rand(8, 31, 31, generator=generator)).softmax(dim=-1))
    together = caa_refine(cams, affinity, box_threshold=0.4)
    one_by_one = torch.cat([caa_refine(cams[index : index + 1], affinity, box_threshold=0.4) for index in range(3)])
    torch.testing.assert_close(together, one_by_one)
    expected_first = minmax((affinity @ (cams[0] * box_mask(cams[0], 0.4)).reshape(-1)).reshape(5, 6), (0, 1))
    torch.testing.assert_close(together[0], expected_first)


def test_caa_rejects_mismatched_affinity():
    with pytest.raises(ValueError, match="affinity shape"):
        caa_refine(torch.rand(2, 3, 3), torch.eye(8))
