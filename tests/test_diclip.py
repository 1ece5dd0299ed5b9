"""DiCLIP (wsss_core/cam/diclip): ACR, its fusion into CLIP, the recursive refinement and the cache retrieval, on cases
checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsss_core.cam.diclip.acr import acr_affinity, anchor_tokens, cluster_mean, kl_clusters, symmetric_kl
from wsss_core.cam.diclip.fusion import diclip_correlation
from wsss_core.cam.diclip.recursive import recursive_refinement, refined_cams, transition_matrix
from wsss_core.cam.diclip.retrieval import key_weights, static_retrieval, weighted_fusion


def test_the_reference_grid_gives_16_anchors_on_20x20():
    # 9 clusters asked for: sqrt(9) = 3, 20 // 3 = 6, so rows and columns 0, 6, 12, 18
    assert anchor_tokens(20).tolist() == [r * 20 + c for r in (0, 6, 12, 18) for c in (0, 6, 12, 18)]
    with pytest.raises(ValueError, match="too small"):
        anchor_tokens(2)


def test_symmetric_kl_is_half_the_jeffreys_divergence_of_the_shifted_vectors():
    a, b = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.9, 0.1]])
    a_, b_ = a + 1e-5, b + 1e-5
    expected = 0.5 * ((a_ - b_) * (a_.log() - b_.log())).sum()
    assert symmetric_kl(a, b).item() == pytest.approx(expected.item(), rel=2e-3)  # float16, as the reference
    assert symmetric_kl(a, a).item() == 0


def test_thresholding_and_chaining_two_heads():
    # Heads 1 and 2 hold the same map: a block of two tokens that attend to each other, and two tokens that attend
    # to themselves (their 0.1 cross terms fall under the 0.2 threshold once columns are divided by their maximum).
    block = torch.tensor([[2.0, 1.0, 0, 0], [1.0, 2.0, 0, 0], [0, 0, 1.0, 0.1], [0, 0, 0.1, 1.0]])
    logits = torch.stack([torch.zeros(4, 4), block, block])[None]  # head 0 is not used
    # one anchor per token (a 2x2 grid with 4 clusters): no two tokens merge, so R is the chained map itself
    refined = acr_affinity(logits, side=2, clusters=4)[0]
    expected = torch.tensor([[5 / 9, 4 / 9, 0, 0], [4 / 9, 5 / 9, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    torch.testing.assert_close(refined, expected, atol=1e-4, rtol=0)


def test_tokens_join_the_nearest_anchor_and_an_anchor_left_empty_is_dropped():
    profile_a, profile_b = torch.tensor([0.7, 0.2, 0.1, 0.0]), torch.tensor([0.0, 0.1, 0.2, 0.7])
    columns = torch.stack([profile_a, profile_a, profile_b, profile_b], dim=1)  # tokens 0, 1 alike; 2, 3 alike
    assert kl_clusters(columns, torch.tensor([0, 2])).tolist() == [0, 0, 1, 1]
    # two anchors on the same profile: every tie goes to the first, the second loses all members and never returns
    assert kl_clusters(columns, torch.tensor([0, 1])).tolist() == [0, 0, 0, 0]


def test_rows_become_their_cluster_mean():
    affinity = torch.tensor([[5 / 9, 4 / 9, 0], [4 / 9, 5 / 9, 0], [0, 0, 1.0]])
    expected = torch.tensor([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1.0]])
    torch.testing.assert_close(cluster_mean(affinity, torch.tensor([0, 0, 1])), expected, atol=1e-5, rtol=0)


def test_the_soft_threshold_drops_small_affinities_and_lifts_the_rest():
    # every column's maximum is already 1; T + 0.02 log10(e T): 1 -> 1.00869, 0.5 -> 0.50267, 0.01 -> below 0 -> 0
    probabilities = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.01], [0.0, 0.01, 1.0]])
    transition = transition_matrix(torch.stack([probabilities] * 3))
    full, half = (value + 0.02 * math.log10(math.e * value) for value in (1.0, 0.5))
    expected = torch.tensor([[full, half, 0], [half, full, 0], [0, 0, full]])
    torch.testing.assert_close(transition, expected / expected.sum(-1, keepdim=True))


def test_an_identity_transition_only_normalises_the_cams():
    cams = torch.tensor([[[1.0, 2.0], [3.0, 5.0]]])  # one class on a 2x2 grid, the SD grid as fine
    refined = recursive_refinement(cams, torch.stack([torch.eye(4)] * 3), iterations=5)
    expected = torch.tensor([[[0.0, 1 / 7], [2 / 7, 4 / 7]]])  # minus the minimum, over the sum
    torch.testing.assert_close(refined, expected)


def test_refined_maps_reach_the_mask_size_with_absent_classes_zero():
    refined = torch.rand(2, 4, 4)
    maps = refined_cams(refined, [1, 3], n_classes=5, size=(6, 10))
    assert maps.shape == (5, 6, 10)
    assert maps[[0, 2, 4]].abs().sum() == 0
    assert 0 <= maps.min() and maps.max() <= 1


def test_the_fused_map_is_q_q_plus_twice_k_k_with_the_affinity_on_the_patch_block_only():
    from types import SimpleNamespace

    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 5, 4, generator=generator), torch.randn(1, 2, 5, 4, generator=generator)
    trace = SimpleNamespace(q=q, k=k, v=torch.zeros_like(q))
    plain = diclip_correlation(None)(trace)
    expected = (q @ q.transpose(-2, -1) / 2).softmax(-1) + 2 * (k @ k.transpose(-2, -1) / 2).softmax(-1)  # s = 4^-0.5
    torch.testing.assert_close(plain, expected)
    torch.testing.assert_close(plain.sum(-1), torch.full((1, 2, 5), 3.0))  # three softmax rows' worth

    affinity = torch.arange(16.0).reshape(1, 4, 4)  # over the 4 patch tokens
    fused = diclip_correlation(affinity)(trace)
    assert torch.equal(fused[:, :, 0], plain[:, :, 0]) and torch.equal(fused[:, :, :, 0], plain[:, :, :, 0])  # CLS
    torch.testing.assert_close(fused[:, :, 1:, 1:] - plain[:, :, 1:, 1:], affinity[:, None].expand(1, 2, 4, 4))


def test_each_class_spreads_over_its_own_keys_by_their_match_with_its_text():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # key 0 background; keys 1 and 2 class 1
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # background text, class 1 text
    # class 1: both its keys match its text by 1 -> 0.5 each; the background column has one key
    torch.testing.assert_close(key_weights(keys, values, texts), torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.0, 0.5]]))


def test_static_retrieval_follows_its_formula_step_by_step():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(1, 1 + 6, 4, generator=generator)
    keys, texts = torch.randn(5, 4, generator=generator), torch.randn(3, 4, generator=generator)
    values = torch.zeros(5, 3)
    values[[0, 1], 0], values[[2], 1], values[[3, 4], 2] = 1, 1, 1

    # the element-wise form of the reference, written out
    similarity = features @ keys.T
    prob = (2 * similarity[:, :1]).softmax(-1)
    weighted = similarity * prob / prob.mean(-1, keepdim=True)
    scores = torch.relu(weighted - weighted.mean(-1, keepdim=True))[:, 1:]
    logits = keys @ texts.T
    weights = torch.where(values > 0, logits, torch.full_like(logits, -torch.inf)).softmax(0)
    maps = scores @ weights
    maps = (maps - maps.amin(1, keepdim=True)) / (maps.amax(1, keepdim=True) - maps.amin(1, keepdim=True))
    fused = torch.relu(maps[..., 1:] * (1 - maps[..., :1]))
    expected = (fused - fused.amin(1, keepdim=True)) / (fused.amax(1, keepdim=True) - fused.amin(1, keepdim=True))
    torch.testing.assert_close(static_retrieval(features, keys, values, texts), expected)


def test_weighted_fusion_adds_then_min_maxes_over_the_tokens():
    cams, extra = torch.tensor([[[0.0], [1.0], [2.0]]]), torch.tensor([[[4.0], [0.0], [0.0]]])
    # 0 + 0.5*4 = 2, 1, 2 -> min-max: 1, 0, 1
    torch.testing.assert_close(weighted_fusion(cams, extra, 0.5), torch.tensor([[[1.0], [0.0], [1.0]]]))


# ------------------------------------------------------------------------------------------ TSA's key-value cache


def test_the_plan_seeds_each_image_and_prompts_some_words_their_own_way():
    from wsss_core.cam.diclip.cache import cache_plan

    plan = cache_plan(
        ["cat", "people"], 2, template="a photo of a {}, a real {}.", overrides={"people": "a crowd."}, seed=7
    )
    assert [(e.image_id, e.class_id, e.seed) for e in plan] == [
        ("sd_001_0001", 1, 7), ("sd_001_0002", 1, 8), ("sd_002_0001", 2, 9), ("sd_002_0002", 2, 10),
    ]  # fmt: skip
    assert [e.prompt for e in plan] == ["a photo of a cat, a real cat."] * 2 + ["a crowd."] * 2


def test_region_keys_are_the_mean_patch_tokens_under_each_region():
    from wsss_core.cam.diclip.cache import region_keys

    # a 2x2 token grid: CLS, then patches (1, 0), (0, 1), (0, 0), (2, 2)
    features = torch.tensor([[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [2.0, 2.0]])
    labels = np.zeros((4, 4), dtype=np.uint8)
    labels[:2, :2] = 3  # the top-left patch's pixels: foreground, whatever the class
    keys = region_keys(features, labels, (2, 2))
    np.testing.assert_allclose(keys, [[1.0, 0.0], [2 / 3, 1.0]])
    empty = region_keys(features, np.zeros((4, 4), dtype=np.uint8), (2, 2))
    assert np.isnan(empty[0]).all() and np.allclose(empty[1], [0.75, 0.75])


def test_keys_are_clustered_background_first_with_one_hot_values():
    from wsss_core.cam.diclip.cache import cluster_keys
    from wsss_core.store.table import ArtifactError

    # two images per class, each [foreground, background]; class 2's second image has no foreground
    regions = np.array(
        [[[1, 0], [0, 0]], [[1, 0.2], [0, 0.2]], [[0, 1], [0.5, 0]], [[np.nan, np.nan], [0.5, 0.1]]], dtype=np.float32
    )
    cache = cluster_keys(regions, [1, 1, 2, 2], 2, clusters=1, background_clusters=2, random_state=0, n_init=1, key="k")
    assert cache.class_ids.tolist() == [0, 0, 1, 2]
    np.testing.assert_array_equal(cache.values, np.eye(3)[[0, 0, 1, 2]])
    np.testing.assert_allclose(cache.keys[2:], [[1.0, 0.1], [0.0, 1.0]])  # class means; the empty region skipped
    assert cache.keys.dtype == np.float32
    with pytest.raises(ArtifactError, match=r"k\.clusters: 2 keys asked for the class 2, but only 1 images"):
        cluster_keys(regions, [1, 1, 2, 2], 2, clusters=2, background_clusters=2, random_state=0, n_init=1, key="k")


def test_the_dynamic_adapter_starts_as_the_cache():
    from wsss_core.adapter.kv_adapter import KvAdapter

    keys, values = torch.randn(3, 4), torch.eye(3)[[0, 2, 1]]
    adapter = KvAdapter(4, 5, 3, keys, values).eval()
    torch.testing.assert_close(adapter.fc1.weight[:3], keys)
    torch.testing.assert_close(adapter.fc2.weight[:, :3], values.T)
    prompts = torch.cat([adapter.fc1.weight[3:].flatten(), adapter.fc2.weight[:, 3:].flatten()])
    assert prompts.abs().max() <= 2 and prompts.std() > 0.3  # truncated normal, std 1 before truncation
    x = torch.randn(2, 6, 4)
    expected = torch.relu(x @ adapter.fc1.weight.T + adapter.fc1.bias) @ adapter.fc2.weight.T + adapter.fc2.bias
    torch.testing.assert_close(adapter(x), expected)
    assert KvAdapter(4, 5, 3).state_dict().keys() == adapter.state_dict().keys()  # rebuilt to load, without a cache
    with pytest.raises(ValueError, match="more than the adapter's 2 hidden units"):
        KvAdapter(4, 2, 3, keys, values)
