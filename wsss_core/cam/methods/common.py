"""What every CAM method shares: the common keys of a cams run, CAA's settings, and the generator interface."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from wsss_core.params.spec import ParamsError, Schema, Spec

INDEX = "artifacts/index"

RUN: Schema = {
    # Required, like every key dvc.yaml interpolates: DVC reads the file, not these defaults.
    "reads": Spec(
        str,
        None,
        "the artifact the run reads besides the dataset index, e.g. artifacts/prompts_<learn run> (FMA prompts); "
        f"{INDEX} for a method that reads nothing else",
    ),
    "store_resolution": Spec(
        str, "feature", "CAMs stored on the token grid or upsampled to image size", choices=("feature", "image")
    ),
}


def caa_settings(*, sinkhorn_rounds: int, box_threshold: float) -> Schema:
    """Class-aware attention affinity (wsss_core/cam/caa.py), with a method's own reference defaults."""
    return {
        "caa_layers": Spec(int, 8, "layers (the last ones) whose attention or tokens CAA uses", min=1),
        "sinkhorn_rounds": Spec(int, sinkhorn_rounds, "Sinkhorn rounds in CAA", min=0),
        "affinity_power": Spec(int, 2, "power t of the CAA affinity", min=1),
        "affinity_source": Spec(
            str,
            "attention",
            "CAA affinity from the layers' attention (CLIP-ES) or their token similarity (AffinityNet-style)",
            choices=("attention", "features"),
        ),
        "feature_power": Spec(float, 8.0, "features: Hadamard power beta of the similarity (AffinityNet 8)", min=1.0),
        "box_threshold": Spec(float, box_threshold, "CAA box mask threshold (times max)", min=0.0, max=1.0),
    }


@dataclass
class CamGenerator:
    """A built CAM method: `cams(image, class_ids)` gives (present class ids, (P, h, w) maps in [0, 1] on the
    scale-1 token grid); `details` go into the artifact's provenance."""

    cams: Callable[[Any, Sequence[int]], tuple[list[int], Any]]
    patch_size: int
    details: dict[str, Any] = field(default_factory=dict)


@contextmanager
def settings_errors(method: str) -> Iterator[None]:
    """A kernel's ValueError about the run's settings, raised as the run's ParamsError (a ParamsError, which already
    names its key, passes as it is)."""
    try:
        yield
    except ParamsError:
        raise
    except ValueError as error:
        raise ParamsError(f"cams run (method {method}): {error}") from None


def result_cams(
    generator: Callable[[Any, Sequence[int]], Any],
) -> Callable[[Any, Sequence[int]], tuple[list[int], Any]]:
    """`CamGenerator.cams` of a kernel whose call returns a result with `class_ids` and `cams` (ExCEL's, DiCLIP's)."""

    def cams(image, class_ids):
        result = generator(image, class_ids)
        return result.class_ids, result.cams

    return cams
