"""DiCLIP's dynamic adapter (TSA's learnable cache, model/model_diclip.KV_Adapter): a two-layer MLP over the fused
CLIP's patch features whose first layer starts as the SD cache's keys and whose second starts as their values.

    logits = Dropout(fc2(Dropout(ReLU(fc1(f)))))          f (B, n, E) -> (B, n, 1 + C)

fc1's weight (H, E) holds the Nk keys in its first rows and "learnable key prompts" drawn from a truncated normal
(std 1, cut at +-2, timm's trunc_normal_ defaults) in the other H - Nk; fc2's weight (1 + C, H) is the transpose of
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
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, classes)
        self.drop = nn.Dropout(dropout)
        if keys is None:
            return
        if keys.ndim != 2 or keys.shape[1] != width or values.shape != (len(keys), classes):
            raise ValueError(
                f"cache keys {tuple(keys.shape)} and values {tuple(values.shape)} do not fit an adapter of width "
                f"{width} and {classes} classes"
            )
        if len(keys) > hidden:
            raise ValueError(f"the cache holds {len(keys)} keys, more than the adapter's {hidden} hidden units")
        with torch.no_grad():
            key_rows = nn.init.trunc_normal_(torch.zeros(hidden, width))
            key_rows[: len(keys)] = keys
            value_rows = nn.init.trunc_normal_(torch.zeros(hidden, classes))
            value_rows[: len(keys)] = values
            self.fc1.weight.copy_(key_rows)
            self.fc2.weight.copy_(value_rows.T)

    def forward(self, features: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(torch.relu(self.fc1(features)))))
