"""WeakTr's CAM generation (the reference's engine.generate_attention_maps_ms with its multi-scale dataset): every
scale of the image and its mirror image through the network, the patch-refined CAMs upsampled bilinearly to the
image size, absent classes zeroed, mirrored views flipped back, all views summed, then each present class min-max
normalised to [0, 1]. The background is a constant threshold in the seeds (WeakTr: 0.43).

A scaled image is resized with PIL's bicubic filter to (round(W * s), round(H * s)); a side that is not a multiple of
the patch size loses its remainder in the patch embedding, and the token grid is stretched over the whole image when
upsampled, as in the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


class WeakTrCams:
    def __init__(
        self,
        network,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        scales: Sequence[float],
        patch_refine: bool,
        amp: bool,
        device: torch.device,
    ) -> None:
        self.network = network.to(device).eval()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.scales, self.patch_refine = tuple(scales), patch_refine
        self.device, self.amp = device, amp and device.type == "cuda"

    def _views(self, image: np.ndarray, scale: float) -> torch.Tensor:
        from PIL import Image

        pil = Image.fromarray(image)
        size = (round(pil.width * scale), round(pil.height * scale))
        if size != pil.size:
            pil = pil.resize(size, resample=Image.BICUBIC)
        tensor = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
        tensor = (tensor - self.mean) / self.std
        return torch.stack((tensor, tensor.flip(-1)))

    @torch.no_grad()
    def __call__(self, image: np.ndarray, class_ids: Sequence[int]) -> tuple[list[int], np.ndarray]:
        """uint8 (H, W, 3) RGB and its foreground class ids -> (sorted ids, (P, H, W) float32 maps in [0, 1])."""
        ids = sorted(set(int(c) for c in class_ids))
        height, width = image.shape[:2]
        present = torch.zeros(self.network.num_classes, 1, 1, device=self.device)
        present[[c - 1 for c in ids]] = 1.0
        total = torch.zeros(self.network.num_classes, height, width, device=self.device)
        for scale in self.scales:
            views = self._views(image, scale).to(self.device)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
                cams = self.network.cams(views, self.patch_refine)
            cams = F.interpolate(cams.float(), size=(height, width), mode="bilinear", align_corners=False) * present
            total += cams[0] + cams[1].flip(-1)
        maps = total[[c - 1 for c in ids]]
        low = maps.amin(dim=(1, 2), keepdim=True)
        high = maps.amax(dim=(1, 2), keepdim=True)
        return ids, ((maps - low) / (high - low + 1e-8)).cpu().numpy()
