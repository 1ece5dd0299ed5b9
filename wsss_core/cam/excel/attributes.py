"""TSE, ExCEL's text semantic enrichment: enrich each class's text embedding with its closest implicit attributes.

The attribute bank A (D, B) holds B KMeans centres of the CLIP text embeddings of LLM-written class descriptions
(wsss_core/describe builds it; ExCEL's model/load_attr.py). For the foreground text t_c (unit norm):

    s_c   = t_c . A                               (B,) similarity to every attribute, no temperature
    s_c   = -inf on the int((1 - top) * B) lowest entries (top = 0.9: the lowest 10 % are dropped)
    T_c   = t_c + softmax(s_c) A^T                (the paper's lambda is 1 in the code)
    T     = L2-normalise rows of [T_1 .. T_C, background texts]

The background texts are only re-normalised (a no-op for unit rows). The count dropped is the reference's
`int((1 - topK) * B)` in double precision: B = 112 drops 11; B = 10 drops int(0.9999...) = 0.
Deviation: when that count is 0 the reference's `corr[:, -0:] = -inf` masks every entry and its softmax is NaN;
here nothing is dropped (a plain softmax over all attributes).
"""

from __future__ import annotations

import torch
from torch import Tensor

TOP_FRACTION = 0.9


def dropped_count(num_attributes: int, top_fraction: float = TOP_FRACTION) -> int:
    """How many of the lowest-scoring attributes are dropped: int((1 - top_fraction) * B), as the reference."""
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must lie in (0, 1], got {top_fraction}")
    return int((1 - top_fraction) * num_attributes)


def attribute_weights(foreground: Tensor, attributes: Tensor, top_fraction: float = TOP_FRACTION) -> Tensor:
    """softmax over attributes of t_c . A with the lowest ones dropped: (C, D), (D, B) -> (C, B), rows sum to 1."""
    logits = foreground.float() @ attributes.float()
    drop = dropped_count(attributes.shape[1], top_fraction)
    if drop:
        lowest = logits.argsort(dim=-1, descending=True)[:, logits.shape[1] - drop :]
        logits = logits.scatter(-1, lowest, float("-inf"))
    return logits.softmax(dim=-1)


def aggregate_attributes(
    text: Tensor, attributes: Tensor, num_foreground: int, *, top_fraction: float = TOP_FRACTION
) -> Tensor:
    """ExCEL's enriched text embeddings (T, D), rows unit norm, foreground classes first.

    Arguments:
      text: (T, D) unit text embeddings, the `num_foreground` class prompts first, then background prompts.
      attributes: (D, B) the attribute bank (KMeans centres as columns).
      num_foreground: C, the number of class rows of `text`.
      top_fraction: share of attributes kept per class (ExCEL's topK 0.9).
    """
    if text.ndim != 2 or attributes.ndim != 2 or text.shape[1] != attributes.shape[0]:
        raise ValueError(
            f"text (T, D) and attributes (D, B) must share D, got {tuple(text.shape)} and {tuple(attributes.shape)}"
        )
    if not 1 <= num_foreground <= text.shape[0]:
        raise ValueError(f"num_foreground must be in 1..{text.shape[0]}, got {num_foreground}")
    attributes = attributes.to(text.device).float()
    foreground, background = text[:num_foreground].float(), text[num_foreground:].float()
    enriched = foreground + attribute_weights(foreground, attributes, top_fraction) @ attributes.T
    rows = torch.cat([enriched, background], dim=0)
    return rows / rows.norm(dim=1, keepdim=True)
