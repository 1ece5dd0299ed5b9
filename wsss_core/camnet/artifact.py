"""The CAM network artifact, `artifacts/camnet_<run>/`, and how the CAM stage rebuilds the trained network.

  weights.safetensors   every weight of the trained network
  provenance.json       stage "cam_net", the run's params, the index (sha256), the backbone checkpoint it started
                        from, library versions; the content seal

The network is rebuilt from the run settings recorded in the provenance (no backbone weights needed), then filled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsss_core.audit import PROVENANCE_FILE, read_provenance
from wsss_core.provenance import dumps
from wsss_core.store.seal import sealed_directory
from wsss_core.store.table import ArtifactError

STAGE = "cam_net"
WEIGHTS_FILE = "weights.safetensors"


def write_camnet(out_dir: Path, network, provenance: dict[str, Any]) -> Path:
    """Write the sealed artifact `out_dir` from a trained network and its provenance."""
    from safetensors.torch import save_file

    weights = {name: value.detach().cpu().contiguous() for name, value in network.state_dict().items()}
    with sealed_directory(out_dir) as building:
        save_file(weights, str(building / WEIGHTS_FILE))
        (building / WEIGHTS_FILE).chmod(0o644)  # safetensors writes 0600, unreadable to teammates sharing the cache
        (building / PROVENANCE_FILE).write_text(dumps(provenance))
    return out_dir


def read_camnet_provenance(directory: Path) -> dict[str, Any]:
    """The provenance of the CAM network artifact `directory`; refuses any other artifact."""
    provenance = read_provenance(directory)
    if provenance.get("stage") != STAGE:
        raise ArtifactError(f"{directory}: not a CAM network artifact (written by stage {provenance.get('stage')!r})")
    return provenance


def load_camnet(directory: Path, device) -> tuple[Any, dict[str, Any]]:
    """(the method's Built with the trained network in eval mode on `device`, the artifact's provenance)."""
    from safetensors.torch import load_file

    from wsss_core.camnet import CAM_NETS

    directory = Path(directory)
    provenance = read_camnet_provenance(directory)
    details = provenance["details"]
    run = provenance["params"][f"cam_nets.runs.{details['run']}"]
    method = CAM_NETS[details["method"]]
    built = method.build_network(run, len(details["class_names"]) - 1, pretrained=False)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"{weights}: not found (an incomplete CAM network artifact)")
    try:
        built.network.load_state_dict(load_file(str(weights), device="cpu"))
    except RuntimeError as error:
        raise ArtifactError(f"{weights}: does not fit the recorded network ({error})") from error
    built.network.to(device).eval()
    return built, provenance
