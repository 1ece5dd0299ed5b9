"""FMA-WSSS's two sets of learnable prompts on a frozen CLIP, and their small on-disk artifact.

Each task learns its own context vectors (paper section 4.1, Table 2 for the alternatives):
- classification: "unified_context", one context shared by every prompt, "[V]1..[V]n name." over the foreground
  class words and the background words;
- segmentation: "csc_prepend", a context per foreground class after its name, "name [V]1..[V]n.", and pure-context
  background prompts "[V]1..[V]n." (as many as there are background words, but without the words);
- ablations: "csc_append_bg_words" ("[V]1..[V]n name." with a context per prompt, background words kept) and
  "csc_prepend_bg_words" ("name [V]1..[V]n." for foreground and background words).

`FmaPrompts()` returns the L2-normalised text embeddings of all prompts, foreground classes first (class 1 first),
then the background prompts. The artifact is a directory with the context tensors (`prompts.safetensors`) and
`provenance.json`, which also records what is needed to rebuild the prompts (design, words, context length) and the
CLIP the contexts were learned on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsss_core.models.clip import ClipModel
from wsss_core.prompts.context import ContextPromptEncoder
from wsss_core.provenance import canonical
from wsss_core.store.seal import without_seal
from wsss_core.store.table import ArtifactError

PROMPT_DESIGNS = ("unified_context", "csc_append_bg_words", "csc_prepend_bg_words", "csc_prepend")
PROMPTS_FILE = "prompts.safetensors"
STORE_DTYPES = {"float16": torch.float16, "float32": torch.float32}
_HEADER_ALIGNMENT = 8  # safetensors pads its JSON header with spaces to a multiple of 8 bytes

# design -> layout of the prompts that carry words (foreground, and background words where the design keeps them)
_WORD_LAYOUT = {
    "unified_context": "unified_end",
    "csc_append_bg_words": "class_end",
    "csc_prepend_bg_words": "class_front",
    "csc_prepend": "class_front",
}


class FmaPrompts(nn.Module):
    """The learnable prompts of one FMA-WSSS task; only the context vectors are parameters.

    Arguments:
      clip: the frozen CLIP (`load_clip`); its weights stay out of this module's parameters.
      design: one of PROMPT_DESIGNS (see the module docstring).
      foreground_words: the words of classes 1..C (CLIP-ES synonyms or the dataset's names).
      background_words: the background words (CLIP-ES: 25 VOC, 23 COCO); for "csc_prepend" only their number counts.
      n_ctx: context vectors per prompt (FMA-WSSS: 16).
      init_std: std of the N(0, std) initialisation (FMA-WSSS: 0.015 classification, 0.0125 VOC segmentation).
      seed: seed of the initialisation; the pure-context background prompts draw theirs with seed + 1.
    """

    def __init__(
        self,
        clip: ClipModel,
        design: str,
        foreground_words: Sequence[str],
        background_words: Sequence[str],
        n_ctx: int = 16,
        init_std: float = 0.015,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if design not in PROMPT_DESIGNS:
            raise ValueError(f"unknown prompt design {design!r}; choose one of {', '.join(PROMPT_DESIGNS)}")
        if not foreground_words:
            raise ValueError("foreground_words is empty: the prompts need at least one class")
        self.design = design
        self.n_ctx = n_ctx
        self.init_std = init_std
        self.foreground_words = list(foreground_words)
        self.background_words = list(background_words)
        layout = _WORD_LAYOUT[design]
        encoders = {}
        if design == "csc_prepend":
            encoders["words"] = ContextPromptEncoder(clip, self.foreground_words, n_ctx, layout, None, init_std, seed)
            if self.background_words:
                count = len(self.background_words)
                encoders["background"] = ContextPromptEncoder(
                    clip, [], n_ctx, "context_only", count, init_std, seed + 1
                )
        else:
            words = self.foreground_words + self.background_words
            encoders["words"] = ContextPromptEncoder(clip, words, n_ctx, layout, None, init_std, seed)
        self.encoders = nn.ModuleDict(encoders)

    @property
    def num_foreground(self) -> int:
        return len(self.foreground_words)

    @property
    def num_prompts(self) -> int:
        return sum(encoder.num_prompts for encoder in self.encoders.values())

    def forward(self) -> torch.Tensor:
        """L2-normalised text embeddings (C + B, E): foreground classes first, then background prompts."""
        return torch.cat([encoder() for encoder in self.encoders.values()], dim=0)

    def contexts(self) -> dict[str, torch.Tensor]:
        """The learnable tensors by name ("words", and "background" for csc_prepend)."""
        return {name: encoder.context for name, encoder in self.encoders.items()}

    def description(self) -> dict[str, Any]:
        """What rebuilds these prompts (stored in the artifact's provenance details)."""
        return {
            "design": self.design,
            "n_ctx": self.n_ctx,
            "foreground_words": self.foreground_words,
            "background_words": self.background_words,
        }

    def extra_repr(self) -> str:
        return f"design={self.design}, n_ctx={self.n_ctx}, prompts={self.num_prompts}"


def prompts_bytes(prompts: FmaPrompts, dtype: str = "float16") -> bytes:
    """The context tensors as safetensors bytes in `dtype` ("float16" halves the size; the reference's training
    forward pass ran the text encoder in float16 too)."""
    from safetensors.torch import save

    if dtype not in STORE_DTYPES:
        raise ValueError(f"unknown store dtype {dtype!r}; choose one of {', '.join(STORE_DTYPES)}")
    tensors = {
        name: context.detach().to("cpu", STORE_DTYPES[dtype]).contiguous()
        for name, context in prompts.contexts().items()
    }
    return _canonical_header(save(tensors, metadata={"design": prompts.design, "n_ctx": str(prompts.n_ctx)}))


def _canonical_header(data: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted.

    safetensors writes `__metadata__` from a Rust HashMap, whose iteration order is randomised per map: with two
    metadata keys, half of all saves put "n_ctx" before "design". Identical prompts then gave different artifact
    bytes (and hashes), run to run and within one process. Sorting the keys makes the bytes a function of the
    tensors and metadata only; readers look entries up by name, and the data offsets are unchanged.
    """
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    canonical_header = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    canonical_header += b" " * (-len(canonical_header) % _HEADER_ALIGNMENT)  # the padding safetensors writes
    return len(canonical_header).to_bytes(8, "little") + canonical_header + data[8 + length :]


def load_prompts(clip: ClipModel, directory: str | Path) -> FmaPrompts:
    """Rebuild the prompts stored in a prompts artifact directory (written by the learn stage) on `clip`.

    Raises ArtifactError naming the directory when it is incomplete or was learned on another CLIP.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    provenance_file, tensors_file = directory / "provenance.json", directory / PROMPTS_FILE
    for required in (provenance_file, tensors_file):
        if not required.is_file():
            raise ArtifactError(f"{directory}: not a prompts artifact ({required.name} missing; has learn run?)")
    provenance = without_seal(json.loads(provenance_file.read_text()))
    details = provenance.get("details", {})
    missing = [key for key in ("design", "n_ctx", "foreground_words", "background_words") if key not in details]
    if missing:
        raise ArtifactError(f"{provenance_file}: provenance details lack {missing}")
    learned_on = provenance.get("checkpoints", {}).get("clip")
    if learned_on != canonical(clip.provenance):
        raise ArtifactError(
            f"{directory}: prompts were learned on CLIP {json.dumps(learned_on, sort_keys=True)}, "
            f"but models.clip loads {json.dumps(canonical(clip.provenance), sort_keys=True)}"
        )
    prompts = FmaPrompts(
        clip, details["design"], details["foreground_words"], details["background_words"], details["n_ctx"]
    )
    try:
        stored = load_file(str(tensors_file))
    except (SafetensorError, OSError) as error:
        raise ArtifactError(f"{tensors_file}: unreadable ({error})") from error
    contexts = prompts.contexts()
    if set(stored) != set(contexts):
        raise ArtifactError(f"{tensors_file}: holds {sorted(stored)}, expected {sorted(contexts)}")
    with torch.no_grad():
        for name, context in contexts.items():
            if stored[name].shape != context.shape:
                raise ArtifactError(
                    f"{tensors_file}: {name} has shape {tuple(stored[name].shape)}, expected {tuple(context.shape)}"
                )
            context.copy_(stored[name].to(context.dtype))
    return prompts
