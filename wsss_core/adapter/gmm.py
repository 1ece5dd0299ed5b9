"""VDA's Gaussian mixtures in the invertible network's latent space (the "Beyond Text" appendix, section 3).

Each component k has a mean mu_k, the identity covariance and a learnt log weight c_k = log pi_k. With
E_k(z) = 1/2 ||z - mu_k||^2 and the constant log (2 pi)^(D/2) dropped, the negative log-likelihood of features x
through the network f (z = f(x)) is

    L = mean over x of [ -LSE_k(c_k - E_k(f(x))) - log|det J_f(x)| ]

The inter-class mixture has one component per class; the intra-class mixture several per class (visual attributes),
the same loss over a class's own components. The log weights are used as they are learnt, not renormalised: the
appendix defines pi_k = exp(c_k) and writes the loss without a normaliser.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def component_scores(z: Tensor, means: Tensor, log_weights: Tensor) -> Tensor:
    """(N, D) latents, (K, D) means, (K,) log weights -> (N, K) c_k - 1/2 ||z - mu_k||^2."""
    if z.ndim != 2 or means.ndim != 2 or z.shape[1] != means.shape[1] or log_weights.shape != means.shape[:1]:
        raise ValueError(
            f"z (N, D), means (K, D) and log_weights (K,) must agree, got {tuple(z.shape)}, {tuple(means.shape)}, "
            f"{tuple(log_weights.shape)}"
        )
    return log_weights - 0.5 * torch.cdist(z, means).pow(2)


def mixture_nll(z: Tensor, log_det: Tensor, means: Tensor, log_weights: Tensor) -> Tensor:
    """The loss above, from latents z (N, D) and the network's log|det J| (N,)."""
    return (-torch.logsumexp(component_scores(z, means, log_weights), dim=1) - log_det).mean()


def responsibilities(z: Tensor, means: Tensor, log_weights: Tensor) -> Tensor:
    """(N, K) the posterior of each component for each latent: softmax_k(c_k - E_k(z))."""
    return component_scores(z, means, log_weights).softmax(dim=1)


class GaussianMixture(nn.Module):
    """`classes` x `per_class` components in `dim` dimensions, means drawn from N(0, 1) and log weights starting
    equal (log 1/K). `per_class` 1 is VDA's inter-class mixture; more is its intra-class one."""

    def __init__(self, classes: int, dim: int, per_class: int = 1) -> None:
        super().__init__()
        if min(classes, dim, per_class) < 1:
            raise ValueError(f"classes, dim and per_class must be at least 1, got {classes}, {dim}, {per_class}")
        self.classes, self.per_class = classes, per_class
        self.means = nn.Parameter(torch.randn(classes * per_class, dim))
        count = classes * per_class
        self.log_weights = nn.Parameter(torch.full((count,), -float(torch.log(torch.tensor(float(count))))))

    def of_class(self, class_index: int) -> tuple[Tensor, Tensor]:
        """(means (per_class, D), log weights (per_class,)) of class `class_index` (0-based)."""
        rows = slice(class_index * self.per_class, (class_index + 1) * self.per_class)
        return self.means[rows], self.log_weights[rows]

    def nll(self, z: Tensor, log_det: Tensor, class_index: int | None = None) -> Tensor:
        """`mixture_nll` over every component, or over the components of one class (the intra-class loss)."""
        means, log_weights = (self.means, self.log_weights) if class_index is None else self.of_class(class_index)
        return mixture_nll(z, log_det, means, log_weights)
