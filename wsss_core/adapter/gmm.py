"""VDA's Gaussian mixtures in the invertible network's latent space (the "Beyond Text" appendix, section 3).

Each component k has a mean mu_k, the identity covariance and a learnt log weight c_k = log pi_k. With
E_k(z) = 1/2 ||z - mu_k||^2 and the constant log (2 pi)^(D/2) dropped, the negative log-likelihood of features x
through the network f (z = f(x)) is

    L = mean over x of [ -LSE_k(c_k - E_k(f(x))) - log|det J_f(x)| ]

The inter-class mixture has one component per class; the intra-class mixture several per class (visual attributes),
the same loss with each feature's LSE over its own class's components. The log weights are used as they are learnt,
not renormalised: the appendix defines pi_k = exp(c_k) and writes the loss without a normaliser.

Reconstruction (the appendix does not say how components start or which class a feature belongs to): a feature's
class is its pseudo label, and a class's components start from data the first time a batch holds enough of its
features, as Glow's ActNorm does: the inter-class mean at their mean, the intra-class means at the centres of 10
k-means (Lloyd) iterations on them, seeded by farthest-point sampling (the first the farthest from their mean, each
next the farthest from it and those picked), so the attributes start spread over the class at its clusters (seeds
alone sit on its outliers). Components not yet started take no part in any loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

KMEANS_ITERATIONS = 10  # Lloyd's iterations that move the intra-class components from their seeds to cluster centres


def component_scores(z: Tensor, means: Tensor, log_weights: Tensor) -> Tensor:
    """(N, D) latents, (K, D) means, (K,) log weights -> (N, K) c_k - 1/2 ||z - mu_k||^2."""
    if z.ndim != 2 or means.ndim != 2 or z.shape[1] != means.shape[1] or log_weights.shape != means.shape[:1]:
        raise ValueError(
            f"z (N, D), means (K, D) and log_weights (K,) must agree, got {tuple(z.shape)}, {tuple(means.shape)}, "
            f"{tuple(log_weights.shape)}"
        )
    return log_weights - 0.5 * torch.cdist(z, means).pow(2)


def mixture_nll(
    z: Tensor, log_det: Tensor, means: Tensor, log_weights: Tensor, allowed: Tensor | None = None
) -> Tensor:
    """The loss above, from latents z (N, D) and the network's log|det J| (N,); `allowed` (N, K) bool restricts each
    latent's LSE to some components (the intra-class loss: its class's)."""
    scores = component_scores(z, means, log_weights)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return (-torch.logsumexp(scores, dim=1) - log_det).mean()


def responsibilities(z: Tensor, means: Tensor, log_weights: Tensor) -> Tensor:
    """(N, K) the posterior of each component for each latent: softmax_k(c_k - E_k(z))."""
    return component_scores(z, means, log_weights).softmax(dim=1)


def farthest_points(points: Tensor, count: int) -> Tensor:
    """Indices of `count` rows of `points` (N, D), N >= count: the farthest from their mean, then each next the
    farthest from the mean and those picked (ties to the lowest index)."""
    distance = (points - points.mean(dim=0)).norm(dim=1)
    picked = []
    for _ in range(count):
        index = int(distance.argmax())
        picked.append(index)
        distance = torch.minimum(distance, (points - points[index]).norm(dim=1))
        distance[index] = -1.0  # never again, even when rows repeat
    return torch.tensor(picked, dtype=torch.long, device=points.device)


def kmeans(points: Tensor, centres: Tensor, iterations: int = KMEANS_ITERATIONS) -> Tensor:
    """Lloyd's iterations from `centres` (K, D) over `points` (N, D); a centre left without points stays put."""
    for _ in range(iterations):
        nearest = torch.cdist(points, centres).argmin(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, nearest, points)
        counts = torch.bincount(nearest, minlength=len(centres)).to(points.dtype)[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return centres


class GaussianMixture(nn.Module):
    """`classes` x `per_class` components in `dim` dimensions, log weights starting equal (log 1/K), means set from
    data by `start` (see the module docstring). `per_class` 1 is VDA's inter-class mixture; more is its intra-class
    one. Classes are 0-based here (a dataset's class c is row c - 1)."""

    def __init__(self, classes: int, dim: int, per_class: int = 1) -> None:
        super().__init__()
        if min(classes, dim, per_class) < 1:
            raise ValueError(f"classes, dim and per_class must be at least 1, got {classes}, {dim}, {per_class}")
        self.classes, self.per_class = classes, per_class
        count = classes * per_class
        self.means = nn.Parameter(torch.zeros(count, dim))
        self.log_weights = nn.Parameter(torch.full((count,), -float(torch.log(torch.tensor(float(count))))))
        self.register_buffer("started", torch.zeros(classes, dtype=torch.bool))
        self.register_buffer("component_class", torch.arange(classes).repeat_interleave(per_class), persistent=False)

    def of_class(self, class_index: int) -> tuple[Tensor, Tensor]:
        """(means (per_class, D), log weights (per_class,)) of class `class_index`."""
        rows = slice(class_index * self.per_class, (class_index + 1) * self.per_class)
        return self.means[rows], self.log_weights[rows]

    @torch.no_grad()
    def start(self, z: Tensor, classes: Tensor) -> None:
        """Set the means of every class not yet started that has at least `per_class` latents among z (N, D) with
        classes (N,)."""
        for class_index in classes.unique().tolist():
            points = z[classes == class_index]
            if self.started[class_index] or len(points) < self.per_class:
                continue
            rows = slice(class_index * self.per_class, (class_index + 1) * self.per_class)
            if self.per_class == 1:
                self.means[rows] = points.mean(dim=0, keepdim=True).to(self.means.dtype)
            else:
                self.means[rows] = kmeans(points, points[farthest_points(points, self.per_class)]).to(self.means.dtype)
            self.started[class_index] = True

    def nll(self, z: Tensor, log_det: Tensor, classes: Tensor | None = None) -> Tensor:
        """`mixture_nll` of latents z (N, D) over every started component (the inter-class loss), or, given their
        classes (N,), each over its own class's components (the intra-class loss). Latents of a class not started
        are left out; with none left the loss is 0 (with a graph, so a step's backward still runs)."""
        component_started = self.started[self.component_class]
        if classes is None:
            keep = torch.ones(len(z), dtype=torch.bool, device=z.device) if component_started.any() else None
            allowed = component_started.expand(len(z), -1)
        else:
            keep = self.started[classes]
            allowed = (classes[:, None] == self.component_class[None]) & component_started[None]
        if keep is None or not keep.any():
            return self.means.sum() * 0.0
        return mixture_nll(z[keep], log_det[keep], self.means, self.log_weights, allowed[keep])
