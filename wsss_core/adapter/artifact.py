"""The adapter artifact, `artifacts/adapter_<run>/`, and how its readers rebuild the trained model.

  weights.safetensors   the trained weights only (`head.*`: adapter and decoder); CLIP's are never in it
  texts.safetensors     `texts` (T, E): the TSE texts the CAMs were trained with (class rows first)
  provenance.json       stage "adapt", the run's params, models.clip, the index and attribute bank it read (sha256),
                        the CLIP checkpoint, library versions; the content seal

Readers must load the same CLIP the run was trained on (its provenance record is compared), since the weights are
a head on that CLIP's features. `load_adapter` gives the whole model (the excel_adapter CAM method);
`load_segmenter` gives its head as a segmenter (model.AdapterSegmenter, the predict stage), which reads the same
per-block tokens as in training (`head_tokens`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from wsss_core.audit import PROVENANCE_FILE, read_provenance
from wsss_core.provenance import canonical, dumps
from wsss_core.store.seal import sealed_directory
from wsss_core.store.table import ArtifactError

STAGE = "adapt"
WEIGHTS_FILE = "weights.safetensors"
TEXTS_FILE = "texts.safetensors"


def write_adapter(out_dir: Path, model, provenance: dict[str, Any]) -> Path:
    """Write the sealed artifact `out_dir` from a trained model (its state dict) and its provenance."""
    from safetensors.torch import save_file

    weights = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    with sealed_directory(out_dir) as building:
        for name, tensors in ((WEIGHTS_FILE, weights), (TEXTS_FILE, {"texts": model.texts.detach().cpu().float()})):
            save_file(tensors, str(building / name))
            (building / name).chmod(0o644)  # safetensors writes 0600, unreadable to teammates sharing the cache
        (building / PROVENANCE_FILE).write_text(dumps(provenance))
    return out_dir


def read_adapter_provenance(directory: Path, clip=None) -> dict[str, Any]:
    """The artifact's provenance, checked to be an adapter's and, given a loaded `clip`, to be trained on it."""
    provenance = read_provenance(directory)
    if provenance.get("stage") != STAGE:
        raise ArtifactError(f"{directory}: not an adapter artifact (written by stage {provenance.get('stage')!r})")
    if clip is not None and provenance["checkpoints"].get("clip") != canonical(clip.provenance):
        raise ArtifactError(
            f"{directory}: trained on CLIP {provenance['checkpoints'].get('clip')}, but models.clip now loads "
            f"{clip.provenance}; rerun its adapt stage or restore models.clip"
        )
    return provenance


def run_settings(provenance: dict[str, Any]) -> dict[str, Any]:
    """The adapt run's params recorded in an adapter's provenance."""
    details = provenance["details"]
    return provenance["params"][f"adapt.runs.{details['run']}"]


def _load_file(path: Path, device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise ArtifactError(f"{path}: not found (an incomplete adapter artifact)")
    return load_file(str(path), device=str(device))


def load_adapter(directory: Path, clip, device) -> tuple[Any, dict[str, Any]]:
    """The trained model of an adapter artifact on `clip` (eval mode, on `device`), and its provenance."""
    from wsss_core.adapter import ADAPT_METHODS

    directory = Path(directory)
    provenance = read_adapter_provenance(directory, clip)
    details, run = provenance["details"], run_settings(provenance)
    texts = _load_file(directory / TEXTS_FILE, device)["texts"]
    model = ADAPT_METHODS[details["method"]].build_model(clip, texts, len(details["class_names"]) - 1, run)
    try:
        model.load_state_dict(_load_file(directory / WEIGHTS_FILE, device))
    except RuntimeError as error:
        raise ArtifactError(f"{directory / WEIGHTS_FILE}: does not fit the recorded model ({error})") from error
    return model.to(device).eval(), provenance


def load_segmenter(directory: Path, clip, device):
    """The trained head of an adapter artifact as a segmenter (`segment.networks.Network`: an `AdapterSegmenter`,
    ImageNet mean/std), for the predict stage."""
    from wsss_core.adapter.model import AdapterSegmenter
    from wsss_core.segment.networks import Network

    model, provenance = load_adapter(directory, clip, device)
    details = provenance["details"]
    return Network(
        AdapterSegmenter(model).eval(), tuple(details["mean"]), tuple(details["std"]), {"clip": clip.provenance}
    )
