"""CAMs from the token grid to image size (kept apart from clip_es so readers need not import open_clip)."""

from __future__ import annotations

import numpy as np


def upsample_cams(cams, size: tuple[int, int]) -> np.ndarray:
    """CAMs (P, h, w) -> (P, H, W) float32 at image size, bilinear (CLIP-ES); returned as they are if already there."""
    import torch
    from torch.nn import functional as F

    maps = np.asarray(cams, dtype=np.float32)
    size = (int(size[0]), int(size[1]))
    if maps.shape[-2:] == size:
        return maps
    if maps.shape[0] == 0:
        return np.zeros((0, *size), dtype=np.float32)
    return F.interpolate(torch.from_numpy(maps)[None], size=size, mode="bilinear", align_corners=False)[0].numpy()
