"""The text side of CLIP: prompts to embeddings (`encode_text`), and the text transformer on given token embeddings
(`encode_text_embeddings`), which is how learnable context prompts are spliced in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from wsss_core.models.clip import ClipModel

# -------------------------------------------------------------------------------------------------------- text side


@torch.no_grad()
def encode_text(clip: ClipModel, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings (P, E) of `prompts`, computed by open_clip's encode_text in batches, no grad."""
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    chunks = []
    for start in range(0, len(prompts), batch_size):
        token_ids = clip.tokenizer(list(prompts[start : start + batch_size])).to(clip.device)
        chunks.append(clip.model.encode_text(token_ids).float())
    return F.normalize(torch.cat(chunks), dim=-1)


def encode_text_embeddings(clip: ClipModel, token_embeddings: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Text features (P, E), not normalised, from token embeddings (P, L, D) in place of token_embedding(token_ids).

    Follows open_clip's CLIP.encode_text after its embedding lookup: positional embedding, causal transformer,
    ln_final, the EOT token (highest id) of `token_ids`, text projection. Gradients flow to `token_embeddings`.
    """
    model = clip.model
    if model.text_pool_type != "argmax":
        raise ValueError(f"{clip.arch}: text pooling {model.text_pool_type!r} is not supported, only 'argmax'")
    if token_embeddings.shape[:2] != token_ids.shape:
        raise ValueError(f"token embeddings {tuple(token_embeddings.shape)} do not match ids {tuple(token_ids.shape)}")
    cast_dtype = model.transformer.get_cast_dtype()
    attn_mask, length = model.attn_mask, token_ids.shape[1]
    if attn_mask is not None:
        # Under the causal mask no token after the last EOT reaches an EOT, so the sequence is cut there: the same
        # features, 2-3x less work for short prompts (learnable prompts run this on every training step).
        length = int(token_ids.argmax(dim=-1).max()) + 1
        attn_mask = attn_mask[:length, :length]
    x = token_embeddings[:, :length].to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=attn_mask)
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), token_ids.argmax(dim=-1)]
    if model.text_projection is None:
        return x
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection
