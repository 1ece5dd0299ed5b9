"""VDA's maths (wsss_core/adapter/inn.py, gmm.py) on cases checked by hand or against autograd's Jacobian."""

from __future__ import annotations

import math

import pytest
import torch

from wsss_core.adapter.gmm import GaussianMixture, component_scores, mixture_nll, responsibilities
from wsss_core.adapter.inn import ActNorm, AffineCoupling, InvertibleNetwork


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Move every parameter off its identity initialisation, so the maps are not trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))


def _log_det_by_autograd(function, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of a map of one D-vector, from autograd's full Jacobian."""
    jacobian = torch.autograd.functional.jacobian(lambda v: function(v[None])[0][0], x)
    return torch.linalg.slogdet(jacobian)[1]


def test_a_coupling_layer_starts_as_the_identity_and_keeps_one_half():
    layer = AffineCoupling(4, 8)
    x = torch.randn(5, 4)
    z, log_det = layer(x)
    torch.testing.assert_close(z, x)
    assert torch.all(log_det == 0)
    _randomise(layer)
    z, _ = layer(x)
    torch.testing.assert_close(z[:, :2], x[:, :2])  # z_1 = u_1
    assert not torch.allclose(z[:, 2:], x[:, 2:])
    swapped = AffineCoupling(4, 8, swap=True)
    _randomise(swapped)
    torch.testing.assert_close(swapped(x)[0][:, 2:], x[:, 2:])  # the other half kept


def test_a_coupling_layer_with_a_constant_scale_is_the_hand_computed_affine_map():
    layer = AffineCoupling(4, 8)
    with torch.no_grad():
        layer.scale.bias.fill_(0.5)  # s = tanh(0.5) * exp(0) for every input
        layer.shift.bias.copy_(torch.tensor([1.0, -2.0]))
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    z, log_det = layer(x)
    s = math.tanh(0.5)
    torch.testing.assert_close(z, torch.tensor([[1.0, 2.0, 3 * math.exp(s) + 1, 4 * math.exp(s) - 2]]))
    torch.testing.assert_close(log_det, torch.tensor([2 * s]))


def test_actnorm_initialises_from_its_first_batch_and_inverts():
    norm = ActNorm(3)
    x = torch.tensor([[1.0, 10.0, -4.0], [3.0, 14.0, -2.0]])  # per channel: mean 2, 12, -3; std 1, 2, 1
    y, log_det = norm(x)
    torch.testing.assert_close(y, torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(log_det, torch.full((2,), -math.log(2.0)), atol=1e-5, rtol=0)
    y2, _ = norm(x + 1)  # initialised once: the same affine map, shifted input
    torch.testing.assert_close(y2, y + norm.log_scale.exp(), atol=1e-5, rtol=0)
    torch.testing.assert_close(norm.inverse(y), x, atol=1e-5, rtol=0)


def test_the_network_inverts_to_float_precision_and_its_log_determinant_is_exact():
    torch.manual_seed(0)
    network = InvertibleNetwork(4, layers=6, hidden=16).double()
    x = torch.randn(64, 4, dtype=torch.float64)
    network(x)  # ActNorm's data-dependent initialisation
    _randomise(network, seed=1)
    network.eval()
    z, log_det = network(x)
    torch.testing.assert_close(network.inverse(z), x, atol=1e-10, rtol=0)
    for row in range(3):
        torch.testing.assert_close(log_det[row], _log_det_by_autograd(network, x[row]), atol=1e-9, rtol=0)
    assert len(network.steps) == 12  # 6 coupling layers, each followed by ActNorm
    float_network = InvertibleNetwork(8, layers=6, hidden=16)
    float_network(torch.randn(32, 8))
    _randomise(float_network, seed=2)
    x = torch.randn(16, 8)
    assert (float_network.inverse(float_network(x)[0]) - x).abs().max() < 1e-5  # float32 precision


def test_mixture_nll_is_the_hand_computed_log_sum_exp():
    # D = 1, two components at 0 and 2 with weights 1/2: at z = 0, -LSE = -log(0.5 e^0 + 0.5 e^-2)
    z, means, log_weights = torch.tensor([[0.0]]), torch.tensor([[0.0], [2.0]]), torch.log(torch.tensor([0.5, 0.5]))
    expected = -math.log(0.5 + 0.5 * math.exp(-2.0)) - 0.25  # log|det J| 0.25 is subtracted
    assert mixture_nll(z, torch.tensor([0.25]), means, log_weights).item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(
        component_scores(z, means, log_weights), torch.log(torch.tensor([[0.5, 0.5]])) - torch.tensor([[0.0, 2.0]])
    )
    posterior = responsibilities(z, means, log_weights)
    torch.testing.assert_close(posterior, torch.tensor([[1 / (1 + math.exp(-2)), math.exp(-2) / (1 + math.exp(-2))]]))
    with pytest.raises(ValueError, match="must agree"):
        component_scores(torch.zeros(1, 2), means, log_weights)


def test_the_intra_class_loss_uses_only_the_class_components():
    mixture = GaussianMixture(classes=2, dim=1, per_class=2)
    with torch.no_grad():
        mixture.means.copy_(torch.tensor([[0.0], [1.0], [10.0], [11.0]]))
    z, log_det = torch.tensor([[0.0]]), torch.zeros(1)
    own = mixture.nll(z, log_det, class_index=0)
    expected = -torch.logsumexp(torch.log(torch.tensor([0.25, 0.25])) - torch.tensor([0.0, 0.5]), 0)
    torch.testing.assert_close(own, expected)
    # the other class's components are 50 and 60.5 away: its loss is far larger, and the full mixture's is close to
    # the own class's
    assert mixture.nll(z, log_det, class_index=1) > own + 40
    torch.testing.assert_close(mixture.nll(z, log_det), own, atol=1e-6, rtol=0)


def test_gradients_reach_the_network_the_means_and_the_weights():
    torch.manual_seed(0)
    network, mixture = InvertibleNetwork(4, layers=2, hidden=8), GaussianMixture(classes=3, dim=4)
    z, log_det = network(torch.randn(10, 4))
    mixture.nll(z, log_det).backward()
    assert mixture.means.grad.abs().sum() > 0 and mixture.log_weights.grad.abs().sum() > 0
    assert all(p.grad is not None for p in network.parameters() if p.requires_grad)
