"""DeepLabV3+ (Chen et al., ECCV 2018) on a torchvision ResNet, the retraining network of FMA-WSSS.

Encoder: torchvision's ResNet with its last stage(s) dilated (output stride 16 or 8) and torchvision's ASPP module
(1x1 conv, three atrous 3x3 convs, image pooling; 256 channels). Decoder: the ASPP output upsampled to the stride-4
features of the first ResNet stage, which are reduced to 48 channels; two 3x3 convs (256) on the concatenation and a
1x1 classifier; logits upsampled bilinearly to the input size.

ImageNet weights come from a local torchvision ResNet state dict (e.g. resnet101-63fe2227.pth), sha256-checked and
loaded with weights_only. Block counts are an argument so that tests build a small network of the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wsss_core.models.checkpoints import CheckpointError, CheckpointRef, load_state_dict
from wsss_core.models.compat import ensure_torchvision

ensure_torchvision()
from torchvision.models._utils import IntermediateLayerGetter  # noqa: E402
from torchvision.models.resnet import Bottleneck, ResNet  # noqa: E402
from torchvision.models.segmentation.deeplabv3 import ASPP  # noqa: E402

RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
RESNET_SOURCE = "https://download.pytorch.org/models/resnet101-63fe2227.pth (torchvision ImageNet ResNet-101)"
# Atrous rates of ASPP for each output stride, from the DeepLabV3/V3+ papers.
ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


def build_resnet(blocks: Sequence[int], output_stride: int) -> ResNet:
    """A torchvision Bottleneck ResNet with `blocks` per stage, dilated to the given output stride (16 or 8)."""
    if output_stride not in ASPP_RATES:
        raise ValueError(f"output_stride must be one of {sorted(ASPP_RATES)}, got {output_stride}")
    if len(blocks) != 4 or min(blocks) < 1:
        raise ValueError(f"blocks must give 4 positive stage depths, e.g. (3, 4, 23, 3) for ResNet-101, got {blocks}")
    dilate = [False, output_stride == 8, True]
    return ResNet(Bottleneck, list(blocks), replace_stride_with_dilation=dilate)


def load_resnet_weights(backbone: nn.Module, path: str | Path, sha256: str | None) -> CheckpointRef:
    """Fill a ResNet backbone from a torchvision ImageNet state dict (its fc layer is dropped); every other key of
    the file must match the backbone's, and every backbone key must be in the file."""
    state, ref = load_state_dict(path, sha256, RESNET_SOURCE)
    state = {
        key.removeprefix("module."): value for key, value in state.items() if not key.startswith(("fc.", "module.fc."))
    }
    expected = {key for key in backbone.state_dict() if not key.startswith("fc.")}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        problem = f"lacks {missing[:3]}" if missing else f"has unknown keys {unexpected[:3]}"
        raise CheckpointError(f"checkpoint {path}: not a ResNet of this depth: it {problem}")
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as error:  # shape mismatches
        raise CheckpointError(f"checkpoint {path}: does not fit the ResNet ({error})") from error
    return ref


class DeepLabV3Plus(nn.Module):
    """normalised images (B, 3, H, W) -> logits (B, K, H, W). Needs batches of 2+ in training (ASPP pooling BN)."""

    def __init__(self, num_classes: int, blocks: Sequence[int] = RESNET_BLOCKS[101], output_stride: int = 16) -> None:
        super().__init__()
        # The getter keeps the ResNet's modules up to layer4 under their own names (conv1, bn1, layer1..4), so
        # torchvision's ImageNet state dict loads into it directly.
        resnet = build_resnet(blocks, output_stride)
        self.backbone = IntermediateLayerGetter(resnet, return_layers={"layer1": "low", "layer4": "high"})
        high_channels, low_channels = 2048, 256  # Bottleneck stages output 4x their width
        self.aspp = ASPP(high_channels, ASPP_RATES[output_stride], out_channels=256)
        self.reduce_low = nn.Sequential(nn.Conv2d(low_channels, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU())
        self.fuse = nn.Sequential(
            nn.Conv2d(256 + 48, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(),
        )
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The pretrained ResNet, and the new ASPP/decoder layers (their learning rates may differ)."""
        head = [*self.aspp.parameters(), *self.reduce_low.parameters(), *self.fuse.parameters()]
        return {"backbone": list(self.backbone.parameters()), "head": head + list(self.classifier.parameters())}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        low = self.reduce_low(features["low"])
        high = F.interpolate(self.aspp(features["high"]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.fuse(torch.cat([high, low], dim=1)))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
