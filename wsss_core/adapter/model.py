"""The trainable ExCEL model (model/model_excel.py): a frozen CLIP, its TSE texts, SVC + LVC for CAMs, and the
WeCLIP head for segmentation, whose front (per-layer MLPs + fusion: ExCEL's `decoder_fts_fuse`) is LVC's adapter.

One forward gives everything a training step needs:
  logits      (B, K, h, w)    the head's segmentation logits on the token grid (1/16 of the input)
  features    (B, 256, h, w)  the adapter features F_d (the head's fused features after Dropout2d), with gradient
  affinity    (B, hw, hw)     sigmoid(3 (cos F_d - mean)): the diversity loss's prediction and dynamic CAA's `seg_attn`
  cams        (B, C, h, w)    SVC's static CAMs of every foreground class (feature surgery with the TSE texts)
  lvc_cams    (B, C, h, w)    with `lvc=True`: the dynamic CAMs, SVC shifted by LVC from the detached F_d
  attentions  (L, B, N, N)    the original path's attention of the last `caa_layers` blocks, for CAA
  static_features, lvc_features  (B, 1 + hw, E)  the projected SVC features the CAMs (and with `lvc` the dynamic
                              CAMs) were computed from, for CAMs of other texts (VDA's descriptions, vda_model.py)

The head reads one token map per CLIP block; `head_tokens="reference"` gives it what ExCEL's head reads, which the
reference's in-place updates of its dual path make differ from the blocks' own outputs in the blocks around the
calibrated ones (visual.py); "original" gives it every block's output, as WeCLIP does. `segment` runs only what the
logits need (the predict stage's segmenter, artifact.py).

CLIP is frozen and kept out of the module's parameters and state dict (`VisualRunner` is a plain attribute, as in
`WeClipSegmenter`): the state dict holds only `head.*`. The texts are a non-persistent buffer, saved apart in the
adapter artifact (artifact.py). The CAMs carry no gradient (the reference's feature surgery returns them detached).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss_core.adapter.diversity import affinity_prediction
from wsss_core.adapter.lvc import lvc_shift
from wsss_core.adapter.visual import (
    calibrated_features,
    calibrated_tokens,
    clip_pass,
    output_tokens,
    reference_head_tokens,
)
from wsss_core.cam.excel.surgery import feature_surgery, normalize_over_tokens
from wsss_core.models.clip import ClipModel
from wsss_core.models.clip_visual import VisualRunner
from wsss_core.segment.weclip_head import WeClipHead

HEAD_TOKENS = ("reference", "original")


@dataclass
class AdapterOutput:
    """See the module docstring for shapes and meaning."""

    logits: Tensor
    features: Tensor
    affinity: Tensor
    cams: Tensor
    attentions: Tensor | None
    lvc_cams: Tensor | None = None
    static_features: Tensor | None = None
    lvc_features: Tensor | None = None


def surgery_cams(features: Tensor, texts: Tensor, num_foreground: int, grid: tuple[int, int]) -> Tensor:
    """Feature-surgery CAMs (B, C, h, w) of the first `num_foreground` texts from SVC features (B, 1 + hw, E):
    normalised over the tokens (ExCEL's quirk), min-max over all tokens, CLS row dropped."""
    scores = feature_surgery(normalize_over_tokens(features.float()), texts)[:, 1:, :num_foreground]
    return scores.transpose(1, 2).reshape(features.shape[0], num_foreground, *grid)


class ClipHeadModel(nn.Module):
    """What ExCEL's and DiCLIP's trainable models share: the frozen CLIP, kept out of the parameters (`VisualRunner`
    is a plain attribute), their unit texts as a non-persistent buffer, and the WeCLIP head, whose fused features
    F_d a hook captures during its own forward (`head_logits`).

    `layers` names each count of the CLIP's last blocks the model uses, checked against the CLIP; `head_tokens` is
    "reference" (the per-block tokens the reference's in-place dual path leaves) or "original".
    """

    def __init__(
        self,
        clip: ClipModel,
        texts: Tensor,
        num_foreground: int,
        *,
        layers: dict[str, int],
        embedding_dim: int,
        transformer_layers: int,
        heads: int,
        dropout: float,
        head_tokens: str,
    ) -> None:
        super().__init__()
        if head_tokens not in HEAD_TOKENS:
            raise ValueError(f"head_tokens must be one of {HEAD_TOKENS}, got {head_tokens!r}")
        self.head_tokens = head_tokens
        self.runner = VisualRunner(clip)
        blocks = self.runner.num_layers
        for name, value in layers.items():
            if not 1 <= value <= blocks:
                raise ValueError(f"{name} must be in 1..{blocks} (the blocks of this CLIP), got {value}")
        if texts.ndim != 2 or not 1 <= num_foreground <= texts.shape[0]:
            raise ValueError(f"texts {tuple(texts.shape)} must be (T, E) with at least {num_foreground} rows")
        self.num_foreground = num_foreground
        self.patch_size = clip.patch_size
        self.register_buffer("texts", texts.detach().float().clone(), persistent=False)
        self.head = WeClipHead(
            self.runner.visual.transformer.width,
            blocks,
            num_foreground + 1,
            embedding_dim=embedding_dim,
            transformer_layers=transformer_layers,
            heads=heads,
            dropout=dropout,
        )
        # WeClipHead does not expose its fused features; a hook on its Dropout2d (the last step of the front, where
        # the reference's decoder_fts_fuse ends) captures F_d during the head's own forward.
        self._captured: list[Tensor] = []
        self.head.dropout.register_forward_hook(lambda module, inputs, output: self._captured.append(output))

    def head_logits(self, tokens: list[Tensor], grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """The head's logits (B, K, h, w) and its fused features F_d (B, embedding_dim, h, w) of one forward."""
        self._captured.clear()
        logits = self.head(tokens, grid)
        return logits, self._captured.pop()


class ExcelAdapterModel(ClipHeadModel):
    """ExCEL's model on a loaded, frozen CLIP.

    Arguments:
      clip: the CLIP (standard vision transformer); stays outside the parameters.
      texts: (T, E) unit TSE texts, the `num_foreground` class rows first, then background words
        (wsss_core/cam/excel/attributes.aggregate_attributes).
      num_foreground: C, the foreground classes; the head predicts C + 1 classes (background first).
      svc_layers: calibrated blocks (ExCEL: 5).
      caa_layers: blocks whose attention CAA reads (ExCEL: 6).
      embedding_dim, transformer_layers, heads, dropout: the WeCLIP head (256, 3, 8, 0.1).
      head_tokens: "reference" (ExCEL's head input, see the module docstring) or "original".
    """

    def __init__(
        self,
        clip: ClipModel,
        texts: Tensor,
        num_foreground: int,
        *,
        svc_layers: int = 5,
        caa_layers: int = 6,
        embedding_dim: int = 256,
        transformer_layers: int = 3,
        heads: int = 8,
        dropout: float = 0.1,
        head_tokens: str = "reference",
    ) -> None:
        super().__init__(
            clip,
            texts,
            num_foreground,
            layers={"svc_layers": svc_layers, "caa_layers": caa_layers},
            embedding_dim=embedding_dim,
            transformer_layers=transformer_layers,
            heads=heads,
            dropout=dropout,
            head_tokens=head_tokens,
        )
        self.svc_layers, self.caa_layers = svc_layers, caa_layers

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """ExCEL's two trained parts: the adapter (per-layer MLPs and fusion conv, `decoder_fts_fuse`) and the
        decoder (transformer layers and classifier)."""
        adapter = [*self.head.layer_mlps.parameters(), *self.head.fuse.parameters()]
        decoder = [*self.head.blocks.parameters(), *self.head.classifier.parameters()]
        return {"adapter": adapter, "decoder": decoder}

    def _head_input(self, clip_out, calibrated: Tensor) -> list[Tensor]:
        if self.head_tokens == "reference":
            return reference_head_tokens(clip_out, calibrated)
        return clip_out.tokens

    def segment(self, images: Tensor) -> Tensor:
        """The head's logits (B, K, h, w) on the token grid of normalised images (B, 3, H, W), nothing else."""
        clip_out = clip_pass(self.runner, images, svc_layers=self.svc_layers, attention_layers=0)
        calibrated = calibrated_tokens(self.runner, clip_out) if self.head_tokens == "reference" else None
        return self.head_logits(self._head_input(clip_out, calibrated), clip_out.grid)[0]

    def forward(self, images: Tensor, *, lvc: bool = False) -> AdapterOutput:
        """Normalised images (B, 3, H, W), H and W multiples of the patch size; see the module docstring."""
        clip_out = clip_pass(self.runner, images, svc_layers=self.svc_layers, attention_layers=self.caa_layers)
        calibrated = calibrated_tokens(self.runner, clip_out)  # SVC's static path
        logits, features = self.head_logits(self._head_input(clip_out, calibrated), clip_out.grid)
        with torch.autocast(device_type=features.device.type, enabled=False):
            affinity = affinity_prediction(features)
        texts = self.texts
        with torch.no_grad():
            static = self.runner.project(output_tokens(clip_out, calibrated))
        cams = surgery_cams(static, texts, self.num_foreground, clip_out.grid)
        lvc_cams = shifted = None
        if lvc:
            shifted = calibrated_features(self.runner, clip_out, lvc_shift(features))
            lvc_cams = surgery_cams(shifted, texts, self.num_foreground, clip_out.grid)
        return AdapterOutput(logits, features, affinity, cams, clip_out.attentions, lvc_cams, static, shifted)


class AdapterSegmenter(nn.Module):
    """A trained model's head as a segmenter: normalised images (B, 3, H, W) of any size -> logits (B, K, H, W).

    Like `WeClipSegmenter`, images are padded on the bottom/right to multiples of the patch size and the logits,
    upsampled bilinearly, cropped back."""

    def __init__(self, model: ExcelAdapterModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        patch = self.model.patch_size
        padded = F.pad(images, (0, -width % patch, 0, -height % patch))
        logits = self.model.segment(padded)
        logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :height, :width]
