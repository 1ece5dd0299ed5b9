"""The trainable DiCLIP model (model/model_diclip.py): a frozen CLIP with Stable Diffusion's attention fused into its
last blocks (VCE/ACR, wsss_core/cam/diclip), the dynamic adapter over its features (kv_adapter.py) and the WeCLIP
head for segmentation.

One forward gives everything a training step needs:
  logits          (B, 1 + C, h, w)  the head's segmentation logits on the token grid
  features        (B, 256, h, w)    the head's fused features F_d, with gradient
  affinity        (B, hw, hw)       sigmoid(3 (cos F_d - mean)): the diversity loss's prediction and CAA's seg_attn
  dynamic_logits  (B, 1 + C, h, w)  the dynamic adapter's output, with gradient (its loss is the segmentation loss)
  cams            (B, C, h, w)      the CAMs the labels come from, detached: the patch-text CAM fused with the
                                    dynamic adapter's ReLU'd maps (weight 0.1) or, before `dynamic`, with the static
                                    retrieval from the cache (weight 0.5), min-maxed over the tokens
  attentions      (L, B, N, N)      the original path's attention of the last `caa_layers` blocks, for CAA
  refine_attention (B, heads, M, M) the SD layer's attention probabilities the labels' recursive refinement uses

The head reads the per-block tokens DiCLIP's does (`head_tokens="reference"`): its dual path updates the stored block
outputs in place as ExCEL's does (wsss_core/adapter/visual.py), so the block before the fused ones holds the fused
path's final tokens, with the SD affinity in them during training. `segment` (prediction) runs without SD, as the
reference's `eval_seg` does: there that slot holds the new path's tokens without the affinity.

CLIP and Stable Diffusion stay outside the module's parameters and state dict: it holds `head.*` and `adapter.*`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss_core.adapter.diversity import affinity_prediction
from wsss_core.adapter.kv_adapter import KvAdapter
from wsss_core.adapter.model import ClipHeadModel
from wsss_core.adapter.visual import calibrated_tokens, clip_pass, output_tokens, reference_head_tokens
from wsss_core.cam.diclip.cams import DiclipSettings, diffusion_maps
from wsss_core.cam.diclip.fusion import diclip_correlation
from wsss_core.cam.diclip.retrieval import static_retrieval, weighted_fusion
from wsss_core.cam.excel.surgery import feature_surgery, normalize_over_tokens
from wsss_core.models.clip import ClipModel


@dataclass
class DiclipOutput:
    """See the module docstring for shapes and meaning."""

    logits: Tensor
    features: Tensor
    affinity: Tensor
    dynamic_logits: Tensor
    cams: Tensor
    attentions: Tensor
    refine_attention: Tensor | None


class DiclipAdapterModel(ClipHeadModel):
    """DiCLIP's model on a loaded, frozen CLIP.

    Arguments:
      clip: the CLIP (standard vision transformer); stays outside the parameters.
      texts: (T, E) unit texts, the `num_foreground` class rows first, then the background words.
      num_foreground: C; the head and the adapter predict C + 1 classes (background first).
      vce: the VCE/ACR settings (`DiclipSettings`: SD layers, heads, thresholds; `fused_layers`, `caa_layers`).
      sd: the Stable Diffusion pipeline VCE reads; None for a model that only segments.
      cache: (keys (Nk, E), values (Nk, 1 + C)) to initialise the adapter and for the static retrieval, or None.
      adapter_size: H of the dynamic adapter (312 VOC, 512 COCO).
      dynamic_weight, retrieval_weight: the CAMs' fusion weights (0.1, 0.5).
      embedding_dim, transformer_layers, heads, dropout: the WeCLIP head (256, 3, 8, 0.1).
      head_tokens: "reference" (the reference's head input) or "original".
    """

    def __init__(
        self,
        clip: ClipModel,
        texts: Tensor,
        num_foreground: int,
        *,
        vce: DiclipSettings,
        sd: Any = None,
        cache: tuple[Tensor, Tensor] | None = None,
        adapter_size: int = 312,
        dynamic_weight: float = 0.1,
        retrieval_weight: float = 0.5,
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
            layers={"fused_layers": vce.fused_layers, "caa_layers": vce.caa_layers},
            embedding_dim=embedding_dim,
            transformer_layers=transformer_layers,
            heads=heads,
            dropout=dropout,
            head_tokens=head_tokens,
        )
        self.vce, self.sd = vce, sd
        self.dynamic_weight, self.retrieval_weight = dynamic_weight, retrieval_weight
        background = self.texts[num_foreground:]
        background = background.mean(0, keepdim=True) if len(background) else torch.zeros_like(self.texts[:1])
        self.register_buffer("class_texts", torch.cat([background, self.texts[:num_foreground]]), persistent=False)
        keys, values = (None, None) if cache is None else (c.detach().float() for c in cache)
        self.cache = None if cache is None else (keys, values)
        self.adapter = KvAdapter(int(texts.shape[1]), adapter_size, num_foreground + 1, keys, values)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """DiCLIP's two trained groups: the dynamic adapter, and the head (decoder and its fusion front)."""
        return {"adapter": list(self.adapter.parameters()), "decoder": list(self.head.parameters())}

    def _pass(self, images: Tensor, affinity: Tensor | None, attention_layers: int):
        clip_out = clip_pass(
            self.runner,
            images,
            svc_layers=self.vce.fused_layers,
            attention_layers=attention_layers,
            correlation=diclip_correlation(affinity),
        )
        fused = calibrated_tokens(self.runner, clip_out)
        head_input = reference_head_tokens(clip_out, fused) if self.head_tokens == "reference" else clip_out.tokens
        return clip_out, fused, head_input

    def segment(self, images: Tensor) -> Tensor:
        """The head's logits (B, 1 + C, h, w) on the token grid of normalised images, without SD (eval_seg)."""
        clip_out, _, head_input = self._pass(images, None, 0)
        return self.head_logits(head_input, clip_out.grid)[0]

    def forward(self, images: Tensor, *, dynamic: bool = True) -> DiclipOutput:
        """Normalised square images (B, 3, S, S), S a multiple of the patch size; see the module docstring."""
        if self.sd is None:
            raise RuntimeError("this DiCLIP model was built without Stable Diffusion: it can only segment")
        side = images.shape[-1] // self.patch_size
        affinity, refine_attention = diffusion_maps(self.sd, images, self.vce, side)
        clip_out, fused, head_input = self._pass(images, affinity, self.vce.caa_layers)
        logits, features = self.head_logits(head_input, clip_out.grid)
        with torch.autocast(device_type=features.device.type, enabled=False):
            prediction = affinity_prediction(features)
        with torch.no_grad():
            clip_features = normalize_over_tokens(self.runner.project(output_tokens(clip_out, fused)).float())
        adapted = self.adapter(clip_features[:, 1:])  # (B, hw, 1 + C), trained
        with torch.no_grad():
            cams = feature_surgery(clip_features, self.texts)[:, 1:, : self.num_foreground]
            if dynamic:
                cams = weighted_fusion(cams, F.relu(adapted.detach().float()[..., 1:]), self.dynamic_weight)
            elif self.cache is not None and self.retrieval_weight:
                retrieved = static_retrieval(clip_features, *(c.to(cams.device) for c in self.cache), self.class_texts)
                cams = weighted_fusion(cams, retrieved, self.retrieval_weight)
        height, width = clip_out.grid
        batch = images.shape[0]
        return DiclipOutput(
            logits=logits,
            features=features,
            affinity=prediction,
            dynamic_logits=adapted.transpose(1, 2).reshape(batch, -1, height, width),
            cams=cams.transpose(1, 2).reshape(batch, self.num_foreground, height, width),
            attentions=clip_out.attentions,
            refine_attention=refine_attention,
        )
