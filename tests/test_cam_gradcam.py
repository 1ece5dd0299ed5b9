"""Softmax-GradCAM on a linear "model" whose gradients are known in closed form.

Model: logits = W @ mean(A[1:]) (CLS excluded). With p = softmax over a set S of logits and target t,
d p_t / d logit_k = p_t (delta_tk - p_k) for k in S, so every patch token gets the same gradient and the
Grad-CAM weight is  w_t = p_t / (N - 1) * (W_t - sum_{k in S} p_k W_k),  and CAM_n = A_n . w_t.
"""

from __future__ import annotations

import math

import pytest
import torch

from wsss_core.cam.gradcam import minmax, softmax_gradcam, softmax_gradcam_loop

LN3 = math.log(3.0)


def hand_example() -> tuple[torch.Tensor, torch.Tensor]:
    """Patches (2,0), (0,0), (1,1), (1,-1) on a 2x2 grid: mean (1, 0); logits (ln 3, 0) -> p = (3/4, 1/4).

    Target 0: w = (3/4)/4 * (1 - 3/4) * (ln 3, 0) = (3 ln3 / 64, 0)    -> raw CAM = 3 ln3/64 * (2, 0, 1, 1)
    Target 1: w = (1/4)/4 * (0 - 3/4 ln 3, 0) = (-3 ln3 / 64, 0)       -> raw CAM = -3 ln3/64 * (2, 0, 1, 1)
    """
    activations = torch.tensor([[5.0, 5.0], [2.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, -1.0]], requires_grad=True)
    weights = torch.tensor([[LN3, 0.0], [0.0, 0.0]])
    return activations, weights @ activations[1:].mean(dim=0)


def closed_form_cams(activations: torch.Tensor, weights: torch.Tensor, targets, subset=None) -> torch.Tensor:
    """Raw CAMs (T, N-1) of the linear model from the formula in the module docstring."""
    logits = weights @ activations[1:].mean(dim=0)
    subset = list(range(len(logits))) if subset is None else list(subset)
    probs = torch.zeros_like(logits)
    probs[subset] = torch.softmax(logits[subset], dim=0)
    num_patches = activations.shape[0] - 1
    grad_weights = torch.stack([probs[t] / num_patches * (weights[t] - probs @ weights) for t in targets])
    return activations.detach()[1:] @ grad_weights.T  # (N-1, T)


def test_hand_example_raw_relu_and_minmax():
    activations, logits = hand_example()
    raw = softmax_gradcam(activations, logits, [0, 1], (2, 2), relu=False, normalize=False, retain_graph=True)
    unit = 3 * LN3 / 64
    expected_raw = torch.tensor([[[2.0, 0.0], [1.0, 1.0]], [[-2.0, 0.0], [-1.0, -1.0]]]) * unit
    torch.testing.assert_close(raw, expected_raw)

    cams = softmax_gradcam(activations, logits, [0, 1], (2, 2))
    # Target 0: min-max of (2, 0, 1, 1). Target 1: all negative -> ReLU zeros -> constant map stays zeros.
    torch.testing.assert_close(cams[0], torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    torch.testing.assert_close(cams[1], torch.zeros(2, 2))
    assert cams.dtype == torch.float32 and not cams.requires_grad


def test_epsilon_uses_fma_masked_softmax():
    # FMA-WSSS: p_0 = 1 / (1 + e^(x1 - x0) + eps) with x0 the max. With x1 - x0 = -ln 3 and eps = 1/3:
    # d p_0 / d x0 = (1/3) / (5/3)^2 = 3/25 = -d p_0 / d x1, so w = (3/25) / 4 * (ln 3, 0) = (3 ln3 / 100, 0).
    activations, logits = hand_example()
    raw = softmax_gradcam(activations, logits, [0], (2, 2), epsilon=1 / 3, relu=False, normalize=False)
    torch.testing.assert_close(raw[0], torch.tensor([[2.0, 0.0], [1.0, 1.0]]) * 3 * LN3 / 100)


@pytest.mark.parametrize("subset", [None, [0, 2, 3, 5]])
def test_matches_closed_form_on_random_linear_model(subset):
    generator = torch.Generator().manual_seed(0)
    activations = torch.randn(13, 6, generator=generator).requires_grad_()  # 3x4 grid + CLS
    weights = torch.randn(6, 6, generator=generator)
    logits = weights @ activations[1:].mean(dim=0)
    targets = [0, 3]
    raw = softmax_gradcam(
        activations, logits, targets, (3, 4), softmax_over=subset, relu=False, normalize=False, retain_graph=True
    )
    expected = closed_form_cams(activations, weights, targets, subset).T.reshape(2, 3, 4)
    torch.testing.assert_close(raw, expected)

    cams = softmax_gradcam(activations, logits, targets, (3, 4), softmax_over=subset)
    torch.testing.assert_close(cams, minmax(expected.clamp_min(0), (-2, -1)))


def test_softmax_over_bool_mask_equals_index_list():
    generator = torch.Generator().manual_seed(1)
    activations = torch.randn(5, 4, generator=generator).requires_grad_()
    logits = torch.randn(5, 4, generator=generator) @ activations[1:].mean(dim=0)
    mask = torch.tensor([True, False, True, True, False])
    raw = dict(relu=False, normalize=False, retain_graph=True)
    by_mask = softmax_gradcam(activations, logits, [2], (2, 2), softmax_over=mask, **raw)
    by_index = softmax_gradcam(activations, logits, [2], (2, 2), softmax_over=[0, 2, 3], **raw)
    everything = softmax_gradcam(activations, logits, [2], (2, 2), **raw)
    torch.testing.assert_close(by_mask, by_index)
    assert not torch.allclose(by_mask, everything)  # the excluded logits changed the weights


def random_batch(seed: int = 2):
    generator = torch.Generator().manual_seed(seed)
    activations = torch.randn(3, 7, 5, generator=generator).requires_grad_()  # B=3, 2x3 grid
    weights = torch.randn(4, 5, generator=generator)
    return activations, weights


@pytest.mark.parametrize("targets", [[0, 2, 3], torch.tensor([[0, 1], [3, 2], [1, 1]])], ids=["shared", "per-item"])
def test_batched_call_equals_one_backward_per_target(targets):
    activations, weights = random_batch()
    logits = torch.tanh(activations[:, 1:]).mean(dim=1) @ weights.T  # non-linear, token-dependent gradients
    kwargs = dict(relu=False, normalize=False, retain_graph=True)
    fast = softmax_gradcam(activations, logits, targets, (2, 3), **kwargs)
    slow = softmax_gradcam_loop(activations, logits, targets, (2, 3), **kwargs)
    torch.testing.assert_close(fast, slow)
    assert fast.shape == (3, torch.as_tensor(targets).shape[-1], 2, 3)


def test_batch_form_equals_per_item_calls():
    activations, weights = random_batch()
    logits = torch.tanh(activations[:, 1:]).mean(dim=1) @ weights.T
    per_item_targets = torch.tensor([[0, 1], [3, 2], [1, 1]])
    batched = softmax_gradcam(activations, logits, per_item_targets, (2, 3))
    for index in range(3):
        item = activations[index].detach().clone().requires_grad_()
        item_logits = torch.tanh(item[1:]).mean(dim=0) @ weights.T
        single = softmax_gradcam(item, item_logits, per_item_targets[index], (2, 3))
        torch.testing.assert_close(batched[index], single)


def test_create_graph_backpropagates_through_weights_only():
    generator = torch.Generator().manual_seed(3)
    activations = torch.randn(5, 3, generator=generator).requires_grad_()
    weights = torch.randn(4, 3, generator=generator)
    scale = torch.tensor(1.5, requires_grad=True)  # stands in for the learnable prompts in the logits path
    logits = (scale * weights) @ activations[1:].mean(dim=0)
    cams = softmax_gradcam(activations, logits, [0, 2], (2, 2), relu=False, normalize=False, create_graph=True)
    assert cams.requires_grad
    grad_scale, grad_activations = torch.autograd.grad(cams.sum(), (scale, activations))

    def closed_form(detach_product: bool) -> torch.Tensor:
        # Differentiable closed form of the raw CAM; A in the product detached (FMA-WSSS) or not.
        probs = torch.softmax((scale * weights) @ activations[1:].mean(dim=0), dim=0)
        grad_weights = torch.stack([probs[t] / 4 * (scale * weights[t] - probs @ (scale * weights)) for t in (0, 2)])
        product = activations.detach() if detach_product else activations
        return product[1:] @ grad_weights.T

    expected_scale, expected_activations = torch.autograd.grad(closed_form(True).sum(), (scale, activations))
    torch.testing.assert_close(grad_scale, expected_scale)
    torch.testing.assert_close(grad_activations, expected_activations)
    (attached_activations,) = torch.autograd.grad(closed_form(False).sum(), (activations,))
    assert not torch.allclose(grad_activations, attached_activations)  # detaching A does change the gradient


def test_loop_with_create_graph_matches_batched():
    activations, weights = random_batch(4)
    logits = torch.tanh(activations[:, 1:]).mean(dim=1) @ weights.T
    kwargs = dict(relu=False, normalize=False, create_graph=True)
    fast = softmax_gradcam(activations, logits, [1, 3], (2, 3), **kwargs)
    slow = softmax_gradcam_loop(activations, logits, [1, 3], (2, 3), **kwargs)
    grad_fast = torch.autograd.grad((fast**2).sum(), activations, retain_graph=True)[0]
    grad_slow = torch.autograd.grad((slow**2).sum(), activations)[0]
    torch.testing.assert_close(grad_fast, grad_slow)


def test_deterministic_and_empty_targets():
    activations, weights = random_batch(5)
    logits = torch.tanh(activations[:, 1:]).mean(dim=1) @ weights.T
    first = softmax_gradcam(activations, logits, [0, 1], (2, 3), retain_graph=True)
    second = softmax_gradcam(activations, logits, [0, 1], (2, 3), retain_graph=True)
    assert torch.equal(first, second)
    assert softmax_gradcam(activations, logits, [], (2, 3)).shape == (3, 0, 2, 3)


def test_minmax_helper():
    values = torch.tensor([[2.0, 4.0, 6.0], [3.0, 3.0, 3.0]])
    torch.testing.assert_close(minmax(values, 1), torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.0, 0.0]]))


def test_bad_inputs_raise_clear_errors():
    activations, logits = hand_example()
    with pytest.raises(ValueError, match="grid"):
        softmax_gradcam(activations, logits, [0], (3, 2))
    with pytest.raises(ValueError, match="outside"):
        softmax_gradcam(activations, logits, [2], (2, 2))
    with pytest.raises(ValueError, match="softmax_over"):
        softmax_gradcam(activations, logits, [1], (2, 2), softmax_over=[0])
    with pytest.raises(ValueError, match="require grad"):
        softmax_gradcam(activations.detach(), logits, [0], (2, 2))
    with pytest.raises(ValueError, match="logits shape"):
        softmax_gradcam(activations, logits[None], [0], (2, 2))


def test_batched_equals_loop_through_a_real_clip_block():
    """The vmap'ed backward must work through open_clip's attention block, not only through linear maps."""
    from wsss_core.models.compat import ensure_torchvision

    ensure_torchvision()
    transformer = pytest.importorskip("open_clip.transformer")
    torch.manual_seed(0)
    block = transformer.ResidualAttentionBlock(32, 4, batch_first=True).eval()
    ln_post, projection = torch.nn.LayerNorm(32), torch.randn(32, 16)
    text = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    tokens = torch.randn(2, 13, 32)  # B=2, CLS + 3x4 patches
    activations = block.ln_1(tokens)  # CLIP-ES takes the CAM on the last block's ln_1 output
    attended = tokens + block.ls_1(block.attn(activations, activations, activations, need_weights=False)[0])
    output = attended + block.ls_2(block.mlp(block.ln_2(attended)))
    image = torch.nn.functional.normalize(ln_post(output)[:, 1:].mean(dim=1) @ projection, dim=-1)
    logits = 100 * image @ text.T
    fast = softmax_gradcam(activations, logits, [0, 2, 5], (3, 4), retain_graph=True)
    slow = softmax_gradcam_loop(activations, logits, [0, 2, 5], (3, 4))
    torch.testing.assert_close(fast, slow)
    assert fast.shape == (2, 3, 3, 4)
