"""The describe stage of ExCEL: class descriptions (from an LLM or a file) -> CLIP text embeddings -> the attribute
bank, KMeans cluster centres of all descriptions and, per class, the clusters its descriptions fell into.

  llm.py       a standard-library client for OpenAI-compatible chat-completions servers, and the answer parser
  sources.py   where descriptions come from: `openai` (the client, with a response cache) or `file` (YAML/JSON)
  bank.py      prefix, encode, cluster, write; `load_attribute_bank` for the CAM methods that use the bank
"""

from __future__ import annotations

from wsss_core.store.table import ArtifactError


class DescriptionError(ArtifactError):
    """Descriptions that cannot be had or used: an LLM that keeps failing, an answer or a file of the wrong shape.

    An `ArtifactError`, so a stage reports it as a message and exits 1 instead of printing a traceback.
    """
