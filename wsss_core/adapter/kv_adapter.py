"""DiCLIP's dynamic adapter (TSA's learnable cache, model/model_diclip.KV_Adapter): a two-layer MLP over the fused
CLIP's patch features whose first layer starts as the SD cache's keys and whose second starts as their values.

    logits = Dropout(fc2(Dropout(ReLU(fc1(f)))))          f (B, n, E) -> (B, n, 1 + C)

fc1's weight (H, E) holds the Nk keys in its first rows and "learnable key prompts" drawn from a truncated normal
(std 1, cut at +-2: timm's trunc_normal_ with its defaults, drawn in the reference's order so that one seed gives
the reference's initial weights) in the other H - Nk; fc2's weight (1 + C, H) is the transpose of
[the one-hot values; truncated-normal rows]. The biases keep nn.Linear's initialisation (the paper says zero) and the
dropout is 0.1, as the reference builds them. H is `adapter_size` (312 VOC, 512 COCO). The shapes do not depend on
Nk, so a trained adapter loads without its cache.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class KvAdapter(nn.Module):
    """Arguments:
    width: E, the CLIP's embedding width.
    hidden: H, the adapter's size (at least the number of cache keys).
    classes: 1 + C, background first.
    keys, values: (Nk, E) and (Nk, 1 + C) of the SD cache; None leaves the layers' own initialisation (a model
      rebuilt to load trained weights).
    dropout: after the ReLU and after fc2.
    """

    def __init__(
        self,
        width: int,
        hidden: int,
        classes: int,
        keys: Tensor | None = None,
        values: Tensor | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if keys is not None:
            if keys.ndim != 2 or keys.shape[1] != width or values.shape != (len(keys), classes):
                raise ValueError(
                    f"cache keys {tuple(keys.shape)} and values {tuple(values.shape)} do not fit an adapter of width "
                    f"{width} and {classes} classes"
                )
            if len(keys) > hidden:
                raise ValueError(f"the cache holds {len(keys)} keys, more than the adapter's {hidden} hidden units")
        # Drawn in the reference's order (fc1, its prompts, fc2, its prompts): one seed gives its initial weights.
        self.fc1 = nn.Linear(width, hidden)
        if keys is not None:
            self._start_from(self.fc1, hidden, width, keys)
        self.fc2 = nn.Linear(hidden, classes)
        if values is not None:
            self._start_from(self.fc2, hidden, classes, values, transposed=True)
        self.drop = nn.Dropout(dropout)

    @staticmethod
    @torch.no_grad()
    def _start_from(layer: nn.Linear, rows: int, columns: int, cache: Tensor, transposed: bool = False) -> None:
        """The layer's weight: the cache's rows first, truncated-normal rows after (transposed for fc2). timm's
        trunc_normal_, as the reference's: torch's own draws other numbers from the same seed."""
        from wsss_core.models.compat import ensure_torchvision

        ensure_torchvision()  # timm imports torchvision (models/compat.py)
        from timm.layers import trunc_normal_

        weight = trunc_normal_(torch.zeros(rows, columns))
        weight[: len(cache)] = cache
        layer.weight.copy_(weight.T if transposed else weight)

    def forward(self, features: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(torch.relu(self.fc1(features)))))
