"""The trainable VDA model ("Beyond Text", appendix and abstract): ExCEL's model (model.py) on template texts, plus the
invertible network and the two Gaussian mixtures that assemble visual prototypes of each class from CLIP's own
features and query the image with them, the text prototype kept alongside.

The abstract's design: build an instance-specific visual prototype from the components (attributes) of a structured
latent space and use it as the query, since text prototypes sit across CLIP's modality gap from visual features;
incorporate the text prototype into it for robustness. How, exactly, is not published; reconstructed here (the
preset and docs/methods.md say so too):
  samples      the unit-normalised projected SVC patch features (CLIP's joint space, E wide, detached), each with its
               token's pseudo label; background and ignored tokens are not samples
  prototype    of class c in image b: pool the image's features under class c's text CAM (a CAM-weighted mean), map it
               through the network, take its responsibilities r_j over class c's intra-class components, and map the
               components' means back: p = normalise(sum_j r_j f^-1(mu_cj)); other classes take `kept_prototypes`
  visual CAM   feature surgery of the features against the prototypes of every class whose components have started
               (surgery, as ExCEL's text CAMs, removes what every query shares: the image's common component)
  fusion       CAM_c = minmax(text CAM_c + description_weight * visual CAM_c); classes not started keep the text CAM
  kept         after training each class's prototype weighs its components by their learnt weights softmax_j(c_cj)
               (the responsibilities' expectation at a mixture's optimum); the buffer `prototypes` keeps them, so the
               CAMs at inference are fused the same way with no network. The head never reads them: predictions are
               ExCEL's.
Adding a visual prototype to the text embedding itself (TSE's form) was tried first and fails: every foreground text
moves toward the image modality while the background words do not, and on the demo the seeds fell to the
all-background baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_core.adapter.gmm import GaussianMixture, responsibilities
from wsss_core.adapter.inn import InvertibleNetwork
from wsss_core.adapter.model import AdapterOutput, ExcelAdapterModel, surgery_cams
from wsss_core.cam.excel.cams import MINMAX_EPSILON, minmax_per_map
from wsss_core.models.clip import ClipModel


class VdaAdapterModel(ExcelAdapterModel):
    """ExCEL's model (its keyword arguments pass through) with VDA's network, mixtures and kept prototypes.

    inn_layers, inn_hidden: the invertible network's coupling layers (6) and their MLPs' width.
    intra_components: intra-class components (attributes) per class.
    description_weight: the visual CAM's weight against the text CAM.
    """

    def __init__(
        self,
        clip: ClipModel,
        texts: Tensor,
        num_foreground: int,
        *,
        inn_layers: int = 6,
        inn_hidden: int = 512,
        intra_components: int = 10,
        description_weight: float = 1.0,
        **excel,
    ) -> None:
        super().__init__(clip, texts, num_foreground, **excel)
        dim = int(texts.shape[1])
        self.description_weight = description_weight
        self.inn = InvertibleNetwork(dim, layers=inn_layers, hidden=inn_hidden)
        self.inter = GaussianMixture(num_foreground, dim)
        self.intra = GaussianMixture(num_foreground, dim, per_class=intra_components)
        # The prototypes inference fuses with (`keep_prototypes`); none before training ends.
        self.register_buffer("prototypes", torch.zeros(num_foreground, dim))
        self.register_buffer("kept", torch.zeros(num_foreground, dtype=torch.bool))

    def parameter_groups(self) -> dict[str, list]:
        """ExCEL's adapter and decoder, and "inn": the network and both mixtures."""
        vda = [*self.inn.parameters(), *self.inter.parameters(), *self.intra.parameters()]
        return {**super().parameter_groups(), "inn": vda}

    # ------------------------------------------------------------------------------------------------ the losses

    def mixture_losses(self, features: Tensor, labels: Tensor, *, intra: bool) -> tuple[Tensor, Tensor]:
        """(inter-class loss, intra-class loss) of a batch: projected SVC features (B, 1 + hw, E) and pseudo labels
        (B, H, W) at the crop (each token takes its centre pixel's label). The intra-class loss is 0 unless `intra`.
        A batch with fewer than 2 foreground tokens gives 0 for both (ActNorm starts from a batch's spread)."""
        dim = features.shape[-1]
        centre = self.patch_size // 2
        grid = features.shape[1] - 1
        token_labels = labels[:, centre :: self.patch_size, centre :: self.patch_size].reshape(-1)
        if token_labels.numel() != features.shape[0] * grid:
            raise ValueError(f"labels {tuple(labels.shape)} do not cover the {grid} tokens of features")
        foreground = (token_labels >= 1) & (token_labels <= self.num_foreground)
        zero = features.new_zeros((), dtype=torch.float32)
        if int(foreground.sum()) < 2:
            return zero, zero
        with torch.autocast(device_type=features.device.type, enabled=False):
            samples = F.normalize(features[:, 1:].detach().float().reshape(-1, dim)[foreground], dim=-1)
            classes = token_labels[foreground] - 1
            z, log_det = self.inn(samples)
            self.inter.start(z.detach(), classes)
            inter = self.inter.nll(z, log_det)
            if not intra:
                return inter, zero
            self.intra.start(z.detach(), classes)
            return inter, self.intra.nll(z, log_det, classes)

    # -------------------------------------------------------------------------------------------- the prototypes

    def component_prototypes(self) -> Tensor:
        """(C, J, E): every intra-class component's mean mapped back through the network."""
        with torch.no_grad(), torch.autocast(device_type=self.texts.device.type, enabled=False):
            back = self.inn.inverse(self.intra.means.float())
        return back.reshape(self.num_foreground, self.intra.per_class, -1)

    @torch.no_grad()
    def assembled_prototypes(self) -> Tensor:
        """(C, E) each class's components weighed by their learnt weights softmax_j(c_cj), unit rows."""
        weights = self.intra.log_weights.float().reshape(self.num_foreground, -1).softmax(dim=1)
        return F.normalize(torch.einsum("cj,cje->ce", weights, self.component_prototypes()), dim=-1)

    def keep_prototypes(self) -> None:
        """End of training: keep the assembled prototypes of every class whose components started."""
        self.prototypes.copy_(self.assembled_prototypes())
        self.kept.copy_(self.intra.started)

    @torch.no_grad()
    def image_prototypes(self, features: Tensor, text_cams: Tensor, present: Sequence[int]) -> Tensor:
        """(C, E) the queries of one image: its projected SVC features (1 + hw, E), text CAMs (C, h, w) and present
        classes (1..C); see the module docstring."""
        queries = self.assembled_prototypes()
        tokens = F.normalize(features[1:].float(), dim=-1)
        components = self.component_prototypes()
        for class_id in present:
            index = class_id - 1
            if not bool(self.intra.started[index]):
                continue
            weights = text_cams[index].float().reshape(-1)
            pooled = (weights[:, None] * tokens).sum(dim=0) / weights.sum().clamp_min(1e-12)
            with torch.autocast(device_type=tokens.device.type, enabled=False):
                z, _ = self.inn(pooled[None])
            means, log_weights = self.intra.of_class(index)
            posterior = responsibilities(z, means.float(), log_weights.float())[0]
            queries[index] = F.normalize(posterior @ components[index], dim=-1)
        return queries

    def fused_cams(self, features: Tensor, text_cams: Tensor, queries: Tensor, ready: Tensor) -> Tensor:
        """CAMs (B, C, h, w): text CAMs (B, C, h, w) fused with the feature-surgery CAMs of features (B, 1 + hw, E)
        against the `ready` rows of queries (B, C, E) (at least two ready, else the text CAMs as they are)."""
        rows = torch.nonzero(ready).flatten()
        if len(rows) < 2:
            return text_cams
        fused = text_cams.float().clone()
        for item in range(len(features)):
            visual = surgery_cams(features[item : item + 1], queries[item, rows], len(rows), text_cams.shape[-2:])[0]
            mixed = text_cams[item, rows].float() + self.description_weight * visual
            fused[item, rows] = minmax_per_map(mixed, MINMAX_EPSILON)
        return fused

    @torch.no_grad()
    def described_cams(self, out: AdapterOutput, present: Sequence[Sequence[int]], dynamic: bool) -> Tensor:
        """Training's CAMs (B, C, h, w) of a batch's output `out`: its text CAMs (static, or LVC's when `dynamic`)
        fused with each image's prototypes."""
        features = out.lvc_features if dynamic else out.static_features
        text = out.lvc_cams if dynamic else out.cams
        queries = torch.stack(
            [
                self.image_prototypes(out.static_features[item], out.cams[item], sorted(set(classes)))
                for item, classes in enumerate(present)
            ]
        )
        return self.fused_cams(features, text, queries, self.intra.started)

    def forward(self, images: Tensor, *, lvc: bool = False) -> AdapterOutput:
        """ExCEL's forward; once prototypes are kept (a trained model), its CAMs are fused with them."""
        out = super().forward(images, lvc=lvc)
        if not bool(self.kept.any()):
            return out
        queries = self.prototypes.expand(len(images), -1, -1)
        with torch.no_grad():
            out.cams = self.fused_cams(out.static_features, out.cams, queries, self.kept)
            if lvc:
                out.lvc_cams = self.fused_cams(out.lvc_features, out.lvc_cams, queries, self.kept)
        return out
