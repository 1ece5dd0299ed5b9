"""Learnable context prompts (CoOp, as FMA-WSSS uses them): context vectors take the place of prompt words.

Each prompt is tokenised with placeholder words ("X") where the context goes; on every forward pass the token
embeddings at those positions are replaced by the context vectors and the text goes through CLIP's own text
transformer. Only the context vectors are trainable; CLIP stays frozen and outside this module's parameters.

Layouts, with [V]1..[V]n the n_ctx context vectors:
- "unified_end":  "[V]1..[V]n name."  one context shared by all prompts (FMA-WSSS classification prompts);
- "class_front":  "name [V]1..[V]n."  one context per prompt (FMA-WSSS segmentation prompts, foreground);
- "context_only": "[V]1..[V]n."       one context per prompt, no words (FMA-WSSS background prompts);
- "class_end":    "[V]1..[V]n name."  one context per prompt (FMA-WSSS Table 2 ablation "CSC + Append").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wsss_core.models.clip import ClipModel
from wsss_core.models.clip_text import encode_text_embeddings

LAYOUTS = ("unified_end", "class_front", "context_only", "class_end")
_PLACEHOLDER = "X"


class ContextPromptEncoder(nn.Module):
    """Text embeddings (P, E) of prompts whose context words are learnable vectors; see the module docstring.

    `class_names` are the words of each prompt (for "context_only" they only label the prompts and may be empty when
    `n_prompts` is given). Context vectors start as N(0, init_std) drawn with `seed`, in float32 on clip.device.
    """

    def __init__(
        self,
        clip: ClipModel,
        class_names: Sequence[str],
        n_ctx: int = 16,
        layout: str = "unified_end",
        n_prompts: int | None = None,
        init_std: float = 0.015,
        seed: int = 0,
    ):
        super().__init__()
        names = _check_names(class_names, layout, n_prompts)
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be at least 1, got {n_ctx}")
        self.clip = clip  # a plain dataclass, so CLIP's weights stay out of parameters() and state_dict()
        self.layout = layout
        self.n_ctx = n_ctx
        self.class_names = names

        placeholder = " ".join([_PLACEHOLDER] * n_ctx)
        count = len(names) if layout != "context_only" or n_prompts is None else n_prompts
        if layout in ("unified_end", "class_end"):
            texts = [f"{placeholder} {name}." for name in names]
            starts = [1] * count
        elif layout == "class_front":
            texts = [f"{name} {placeholder}." for name in names]
            starts = [1 + len(clip.tokenizer.encode(name)) for name in names]
        else:
            texts = [f"{placeholder}."] * count
            starts = [1] * count
        self.prompts = texts
        token_ids = _tokenize_checked(clip, texts, starts, n_ctx)

        with torch.no_grad():
            base_embeddings = clip.model.token_embedding(token_ids).float()
        rows = torch.arange(count).repeat_interleave(n_ctx)
        columns = (torch.tensor(starts).unsqueeze(1) + torch.arange(n_ctx)).flatten()
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.register_buffer("base_embeddings", base_embeddings, persistent=False)
        self.register_buffer("context_rows", rows.to(clip.device), persistent=False)
        self.register_buffer("context_columns", columns.to(clip.device), persistent=False)

        width = base_embeddings.shape[-1]
        shape = (n_ctx, width) if layout == "unified_end" else (count, n_ctx, width)
        generator = torch.Generator().manual_seed(seed)
        self.context = nn.Parameter((torch.randn(shape, generator=generator) * init_std).to(clip.device))

    @property
    def num_prompts(self) -> int:
        return self.token_ids.shape[0]

    def forward(self) -> torch.Tensor:
        """L2-normalised text embeddings (P, E), differentiable with respect to the context vectors."""
        context = self.context
        if context.dim() == 2:
            context = context.expand(self.num_prompts, -1, -1)
        flat_context = context.reshape(-1, context.shape[-1]).to(self.base_embeddings.dtype)
        embeddings = self.base_embeddings.index_put((self.context_rows, self.context_columns), flat_context)
        features = encode_text_embeddings(self.clip, embeddings, self.token_ids)
        return F.normalize(features.float(), dim=-1)

    def extra_repr(self) -> str:
        return f"layout={self.layout}, n_ctx={self.n_ctx}, prompts={self.num_prompts}"


def _check_names(class_names: Sequence[str], layout: str, n_prompts: int | None) -> list[str]:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    if isinstance(class_names, str) or not all(isinstance(name, str) for name in class_names):
        raise ValueError(f"class_names must be a list of strings, got {class_names!r}")
    names = list(class_names)
    if layout == "context_only":
        if n_prompts is None and not names:
            raise ValueError("layout 'context_only' needs n_prompts (or class_names to count the prompts)")
        if n_prompts is not None and names and n_prompts != len(names):
            raise ValueError(f"n_prompts={n_prompts} disagrees with {len(names)} class_names")
        if n_prompts is not None and n_prompts < 1:
            raise ValueError(f"n_prompts must be at least 1, got {n_prompts}")
        return names
    if n_prompts is not None:
        raise ValueError(f"n_prompts applies to layout 'context_only' only, not {layout!r}")
    if not names or not all(name.strip() for name in names):
        raise ValueError(f"layout {layout!r} needs non-empty class names, got {names!r}")
    return names


def _tokenize_checked(clip: ClipModel, texts: list[str], starts: list[int], n_ctx: int) -> torch.Tensor:
    """Token ids (P, L) of the prompts, refusing prompts the tokenizer would truncate or split unexpectedly."""
    context_length = clip.model.context_length
    placeholder_id = clip.tokenizer.encode(_PLACEHOLDER)
    if len(placeholder_id) != 1:
        raise ValueError(f"placeholder {_PLACEHOLDER!r} is not a single token for this tokenizer")
    for text in texts:
        length = len(clip.tokenizer.encode(text)) + 2  # start and end tokens
        if length > context_length:
            raise ValueError(f"prompt {text!r} has {length} tokens, more than CLIP's context of {context_length}")
    token_ids = clip.tokenizer(texts).to(clip.device)
    for row, (text, start) in enumerate(zip(texts, starts, strict=True)):
        if not bool((token_ids[row, start : start + n_ctx] == placeholder_id[0]).all()):
            raise ValueError(f"prompt {text!r}: the context placeholders are not where expected (token {start} on)")
    return token_ids
