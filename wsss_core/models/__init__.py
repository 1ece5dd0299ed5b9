"""Access to the foundation models (CLIP, SAM, Stable Diffusion).

This package file stays import-light: torch is imported only when a function needs it, and the model
libraries only by the submodules that wrap them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Pixel statistics of ImageNet, which ImageNet-pretrained backbones (the segmenters', DeiT) expect and ExCEL also
# uses with CLIP (its datasets/transforms.normalize_img): RGB in 0-1.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn a device argument into a `torch.device`: "auto" is cuda when available, else cpu.

    Asking for cuda where there is none fails here, with the device named, rather than deep inside a model.
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r} is not a torch device ({error}); use 'auto', 'cpu' or 'cuda'") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asks for CUDA, which is not available here; use 'auto' or 'cpu'")
    return resolved
