"""VDA's invertible network (the "Beyond Text" appendix, section 2): Real-NVP affine coupling layers, each followed by
Glow's ActNorm, mapping D-dimensional features to a latent space of the same size with an exact log-determinant.

A coupling layer splits its input u by channels into halves u_1, u_2 and keeps one:

    z_1 = u_1,    z_2 = u_2 * exp(s(u_1)) + t(u_1),    log|det J| = sum s(u_1)

s and t are small MLPs (Real-NVP's; s ends in tanh, scaled by a learnt per-channel factor, so exp(s) stays bounded
at the start of training). ActNorm then applies y = (z + b) * exp(log_scale) per channel, log|det J| = sum
log_scale, initialised from the first batch it sees so that batch leaves with zero mean and unit variance (Glow).

Reconstruction choices the appendix leaves open, kept as arguments: which half a layer transforms alternates from
layer to layer (Real-NVP's checkerboard of channel masks; with the same half every time, the other half would never
change); the MLPs' width (`hidden`). VDA uses 6 layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AffineCoupling(nn.Module):
    """One Real-NVP affine coupling layer over (N, D) features, D even. `swap`: transform the first half from the
    second instead of the second from the first."""

    def __init__(self, dim: int, hidden: int, *, swap: bool = False) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"a coupling layer splits its channels in halves: dim must be even, got {dim}")
        half = dim // 2
        self.swap = swap
        self.net = nn.Sequential(nn.Linear(half, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.scale = nn.Linear(hidden, half)
        self.shift = nn.Linear(hidden, half)
        self.scale_factor = nn.Parameter(torch.zeros(half))
        # Start as the identity: the last layers at zero give s = 0 and t = 0.
        for layer in (self.scale, self.shift):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        first, second = x.chunk(2, dim=-1)
        return (second, first) if self.swap else (first, second)

    def _join(self, kept: Tensor, changed: Tensor) -> Tensor:
        return torch.cat([changed, kept] if self.swap else [kept, changed], dim=-1)

    def _scale_shift(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.net(kept)
        return torch.tanh(self.scale(hidden)) * self.scale_factor.exp(), self.shift(hidden)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, D) -> (z (N, D), log|det J| (N,))."""
        kept, changed = self._split(x)
        log_scale, shift = self._scale_shift(kept)
        return self._join(kept, changed * log_scale.exp() + shift), log_scale.sum(dim=-1)

    def inverse(self, z: Tensor) -> Tensor:
        kept, changed = self._split(z)
        log_scale, shift = self._scale_shift(kept)
        return self._join(kept, (changed - shift) * (-log_scale).exp())


class ActNorm(nn.Module):
    """Glow's activation normalisation over (N, D) features: y = (x + bias) * exp(log_scale) per channel, initialised
    from the first batch in training mode (zero mean, unit variance there)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.eps = eps
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        self.bias.copy_(-x.mean(dim=0))
        self.log_scale.copy_(-torch.log(x.std(dim=0, unbiased=False) + self.eps))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, D) -> (y (N, D), log|det J| (N,))."""
        if self.training and not bool(self.initialized):
            self._initialize(x)
        y = (x + self.bias) * self.log_scale.exp()
        return y, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * (-self.log_scale).exp() - self.bias


class InvertibleNetwork(nn.Module):
    """`layers` coupling + ActNorm pairs over (N, dim) features (VDA: 6), the transformed half alternating.

    forward(x) -> (z, log|det J|) with J the Jacobian of the whole map; inverse(z) -> x."""

    def __init__(self, dim: int, layers: int = 6, hidden: int = 512) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be at least 1, got {layers}")
        self.steps = nn.ModuleList()
        for index in range(layers):
            self.steps.append(AffineCoupling(dim, hidden, swap=bool(index % 2)))
            self.steps.append(ActNorm(dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_det = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for step in self.steps:
            x, step_log_det = step(x)
            log_det = log_det + step_log_det
        return x, log_det

    def inverse(self, z: Tensor) -> Tensor:
        for step in reversed(self.steps):
            z = step.inverse(z)
        return z
