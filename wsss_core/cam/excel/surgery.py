"""Feature surgery (CLIP Surgery, Li et al.; ExCEL's clip/clip.py): patch-text similarity with the part shared by
all texts removed, which is what turns CLIP's noisy dense similarity into a usable CAM.

For image features f (B, 1 + N, E), token 0 = CLS, and texts T (K, E) (foreground classes and background words):

    p    = softmax(2 * f_cls . T^T)                 (B, K) how much each text matches the whole image
    w_k  = p_k / mean_k' p_k'                       weights that damp the obvious classes' influence on the others
    S_nk = w_k (f_n . T_k) - mean_k' w_k' (f_n . T_k')
    CAM  = min-max of S over the tokens (CLS included), per image and text

ExCEL's quirks, reproduced:
  - its features are divided by their norm over the *tokens* (dim 1), not over the channels
    (`normalize_over_tokens`; generate_clip_fts), so f_cls is tiny and p is close to uniform;
  - the min-max runs over all 1 + N tokens, CLS included, and the CLS row is dropped afterwards, so a patch map
    need not reach exactly 0 or 1.
The reference builds the (B, N, K, E) element-wise product and sums it; the same sum is taken here as a matrix
product (equal up to float rounding). Deviation: a text whose S is constant over the tokens gives 0 here, where
the reference divides 0 by 0.
"""

from __future__ import annotations

from torch import Tensor


def normalize_over_tokens(features: Tensor) -> Tensor:
    """ExCEL's normalisation of image features (B, N, E): each channel divided by its norm over the N tokens."""
    return features / features.norm(dim=1, keepdim=True)


def surgery_scores(image_features: Tensor, text_features: Tensor, *, temperature: float = 2.0) -> Tensor:
    """S (B, 1 + N, K) of the module docstring, before the min-max (DiCLIP's retrieval takes it through a ReLU)."""
    if image_features.ndim != 3 or text_features.ndim != 2 or image_features.shape[-1] != text_features.shape[-1]:
        raise ValueError(
            f"image_features (B, 1 + N, E) and text_features (K, E) must share E, got "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )
    features, texts = image_features.float(), text_features.float().to(image_features.device)
    similarity = features @ texts.T  # (B, 1 + N, K)
    prob = (temperature * similarity[:, :1]).softmax(dim=-1)
    weighted = similarity * (prob / prob.mean(dim=-1, keepdim=True))
    return weighted - weighted.mean(dim=-1, keepdim=True)


def min_max_over_tokens(scores: Tensor) -> Tensor:
    """(B, N, K) -> each image's and column's scores min-maxed over the N tokens; a constant column gives 0."""
    low = scores.amin(dim=1, keepdim=True)
    span = scores.amax(dim=1, keepdim=True) - low
    return (scores - low) / span.where(span > 0, 1.0)


def feature_surgery(image_features: Tensor, text_features: Tensor, *, temperature: float = 2.0) -> Tensor:
    """CAM scores (B, 1 + N, K) in [0, 1] per image and text, min-max over the tokens; see the module docstring."""
    return min_max_over_tokens(surgery_scores(image_features, text_features, temperature=temperature))
