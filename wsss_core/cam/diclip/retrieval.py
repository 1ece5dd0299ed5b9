"""DiCLIP's static retrieval from its SD key-value cache (TSA), and the weighted fusion of an extra map into a CAM.

The cache holds keys K (Nk, E), CLIP features of synthetic images' class regions clustered per class (background
first), and values V (Nk, C) one-hot, C counting the background. For image features f (B, 1 + n, E) on the token
axis-normalised scale the CAM uses, and the class texts T (C, E) = [the mean of the background words' embeddings
(not renormalised), then the foreground classes' embeddings]:

    s   = ReLU(feature-surgery scores of f against K)            (B, 1 + n, Nk), no min-max
    W   = softmax over the keys of K T^T, -inf where V is 0        (Nk, C): each class a distribution over its keys
    M   = min-max over the patch tokens of s[patches] W            (B, n, C)
    map = min-max over the tokens of ReLU(M_fg * (1 - M_bg))       (B, n, C - 1)

The reference weights the background column by its text too (the paper calls those values plain one-hot) and
min-maxes without a guard; here a constant column gives 0 rather than 0/0, as in feature surgery.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wsss_core.cam.excel.surgery import min_max_over_tokens, surgery_scores


def key_weights(keys: Tensor, values: Tensor, class_texts: Tensor) -> Tensor:
    """(Nk, E) keys, (Nk, C) one-hot values, (C, E) class texts -> (Nk, C): per class, a softmax over its keys of
    their match with its text (zero on other classes' keys)."""
    logits = keys.float() @ class_texts.float().T
    return logits.masked_fill(values == 0, float("-inf")).softmax(dim=0)


def static_retrieval(image_features: Tensor, keys: Tensor, values: Tensor, class_texts: Tensor) -> Tensor:
    """(B, 1 + n, E) image features -> (B, n, C - 1) foreground maps retrieved from the cache (module docstring)."""
    scores = torch.relu(surgery_scores(image_features, keys))
    maps = min_max_over_tokens(scores[:, 1:] @ key_weights(keys, values, class_texts).to(scores.device))
    foreground, background = maps[..., 1:], maps[..., :1]
    return min_max_over_tokens(torch.relu(foreground * (1 - background)))


def weighted_fusion(cams: Tensor, extra: Tensor, weight: float) -> Tensor:
    """min-max over the tokens of cams + weight * extra (DiCLIP: 0.5 for the static retrieval, 0.1 for the dynamic
    adapter's ReLU'd maps)."""
    return min_max_over_tokens(cams + weight * extra)
