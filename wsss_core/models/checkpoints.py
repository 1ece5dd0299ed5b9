"""Safe checkpoint loading: the file must exist, match its expected sha256, and hold only tensors.

Model weights cannot be fetched by this tool at run time: a missing file stops with a message that
names the expected path and where such a file comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsss_core.hashing import sha256_file


class CheckpointError(RuntimeError):
    pass


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint file as recorded in provenance."""

    path: str
    sha256: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "sha256": self.sha256}


def verify_checkpoint(path: str | Path, expected_sha256: str | None = None, source_hint: str = "") -> CheckpointRef:
    """Check the file exists (and matches `expected_sha256` when given); return its reference."""
    path = Path(path)
    if not path.is_file():
        hint = f" It comes from: {source_hint}." if source_hint else ""
        raise CheckpointError(f"checkpoint not found: {path}.{hint} Download it there, or set the path in params.yaml.")
    digest = sha256_file(path)
    if expected_sha256 and digest != expected_sha256.lower():
        raise CheckpointError(f"checkpoint {path}: sha256 is {digest}, params expect {expected_sha256}")
    return CheckpointRef(path=str(path), sha256=digest)


def load_state_dict(
    path: str | Path, expected_sha256: str | None = None, source_hint: str = ""
) -> tuple[dict[str, Any], CheckpointRef]:
    """Load a state dict from .safetensors or a torch file with `weights_only=True` (no pickled code)."""
    ref = verify_checkpoint(path, expected_sha256, source_hint)
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path)), ref
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError and others for foreign or unsafe files
        raise CheckpointError(f"checkpoint {path}: cannot be loaded with weights_only=True ({error})") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: expected a state dict, found {type(state).__name__}")
    return state, ref
