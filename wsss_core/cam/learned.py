"""CAMs from learned prompts (FMA-WSSS): Softmax-GradCAM against the learned text embeddings, refined by CAA.

Scoring an image follows CLIP-ES, with FMA-WSSS's changes:
  - text embeddings come from learned prompts (`wsss_core.prompts.fma`), foreground classes first, then background;
  - logits = CLIP's own logit scale * cos(image, text), image embedding = mean of the projected patch tokens;
  - the softmax runs over the present foreground classes and all background prompts with FMA's epsilon 1e-5 in its
    denominator; the CAM has no ReLU and no normalisation (`gradcams_of_present`). Training calls it with
    `create_graph=True`, so a loss on the CAM reaches the prompts through the Grad-CAM weights.
For seeds (`LearnedPromptCams`), CAA refines either the normalised score (ReLU + min-max, "score", the VOC
classification setting) or the raw CAM ("cam", VOC segmentation) with boxes taken from the score, or is skipped
("none", COCO segmentation); the result is stored as ReLU + min-max in [0, 1], which is what SAMS and the CRF and
power seed rules read (SAMS min-maxes per class itself, so this rescaling does not change its seeds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from wsss_core.cam.caa import caa_refine, check_affinity_source, trace_affinity
from wsss_core.cam.clip_es import ClipEsCams
from wsss_core.cam.gradcam import minmax, softmax_gradcam
from wsss_core.cam.methods.fma_prompts import SETTINGS as _DEFAULTS
from wsss_core.models.clip import ClipModel
from wsss_core.models.clip_visual import VisualRunner, prepare_image

SOFTMAX_EPSILON = 1e-5  # FMA-WSSS's masked softmax: exp / (sum over the mask + epsilon)
REFINE_MODES = ("score", "cam", "none")


def image_logits(
    runner: VisualRunner, last_tokens: torch.Tensor, text: torch.Tensor, logit_scale: float
) -> torch.Tensor:
    """logit_scale * cos(mean projected patch token, text): (B, N, D) tokens, (K, E) text -> (B, K) float32."""
    with torch.autocast(last_tokens.device.type, enabled=False):
        patches = runner.project(last_tokens.float())[:, 1:]
        embedding = F.normalize(patches.mean(dim=1), dim=-1)
        return logit_scale * embedding @ text.float().T


def gradcams_of_present(
    activations: torch.Tensor,
    logits: torch.Tensor,
    present: torch.Tensor,
    grid: tuple[int, int],
    *,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FMA-WSSS Softmax-GradCAM of every present class of every image, in one batched autograd call.

    Arguments:
      activations: (B, N, D) the last block's ln_1 output, in the graph of `logits`.
      logits: (B, K) with the C foreground prompts first, then K - C background prompts.
      present: (B, C) bool, the classes to explain; the softmax of image b runs over its present classes and all
        background prompts.
      create_graph: keep the graph of the Grad-CAM weights (training).
    Returns (cams (P, h, w) float32 without ReLU or normalisation, image index (P,), class id 1..C (P,)), ordered by
    image, then class.
    """
    batch, num_prompts = logits.shape
    num_foreground = present.shape[1]
    present = present.to(logits.device).bool()
    counts = present.sum(dim=1)
    width = max(int(counts.max()), 1)
    targets = torch.zeros((batch, width), dtype=torch.long, device=logits.device)
    valid = torch.zeros((batch, width), dtype=torch.bool, device=logits.device)
    mask = torch.zeros((batch, num_prompts), dtype=torch.bool, device=logits.device)
    mask[:, :num_foreground] = present
    mask[:, num_foreground:] = True
    for item in range(batch):
        classes = torch.nonzero(present[item]).flatten()
        if len(classes):
            targets[item, : len(classes)] = classes
            targets[item, len(classes) :] = classes[0]  # padding: recomputed, then dropped
            valid[item, : len(classes)] = True
        else:  # nothing to explain: a dummy target (dropped) keeps the batch rectangular
            mask[item, 0] = True
    cams = softmax_gradcam(
        activations,
        logits,
        targets,
        grid,
        softmax_over=mask,
        epsilon=SOFTMAX_EPSILON,
        relu=False,
        normalize=False,
        create_graph=create_graph,
    )  # (B, T, h, w)
    items = torch.arange(batch, device=logits.device).unsqueeze(1).expand(batch, width)
    return cams[valid], items[valid], targets[valid] + 1


@dataclass(frozen=True)
class LearnedCamSettings:
    """CAA settings of one task. The defaults are the `fma_prompts` method's settings (wsss_core/cam/methods/
    fma_prompts.py: FMA-WSSS VOC classification, 1 Sinkhorn round, box threshold 0.4, t = 2, on the score)."""

    caa_layers: int = _DEFAULTS["caa_layers"].default
    sinkhorn_rounds: int = _DEFAULTS["sinkhorn_rounds"].default
    affinity_power: int = _DEFAULTS["affinity_power"].default
    affinity_source: str = _DEFAULTS["affinity_source"].default  # attention (CLIP-ES, FMA-WSSS) | features (caa.py)
    feature_power: float = _DEFAULTS["feature_power"].default  # beta of the "features" source
    box_threshold: float = _DEFAULTS["box_threshold"].default
    refine: str = _DEFAULTS["refine"].default
    # CAA boxes as FMA-WSSS's scoremap2bbox (libs/seeding/aff/utils.py, the same code as CLIP-ES's utils.py): the
    # score quantised to 8 bits before thresholding, box ends clipped to w-1 / h-1 (caa.box_mask).
    reference_quirks: bool = _DEFAULTS["reference_quirks"].default

    def __post_init__(self) -> None:
        if self.refine not in REFINE_MODES:
            raise ValueError(f"refine must be one of {REFINE_MODES}, got {self.refine!r}")
        check_affinity_source(self.affinity_source)


class LearnedPromptCams:
    """CAMs of one image (batch 1, scale 1, size rounded up to the patch size, fp32 as the reference's inference)
    from learned prompts (`FmaPrompts`, or any module returning (C + B, E) text embeddings, foreground first)."""

    def __init__(self, clip: ClipModel, prompts: torch.nn.Module, settings: LearnedCamSettings) -> None:
        self.clip = clip
        self.runner = VisualRunner(clip)
        self.settings = settings
        if not 1 <= settings.caa_layers <= self.runner.num_layers:
            raise ValueError(f"caa_layers must be in 1..{self.runner.num_layers}, got {settings.caa_layers}")
        self.num_foreground = prompts.num_foreground
        with torch.no_grad():
            self.text = prompts().float()
        self.logit_scale = float(clip.model.logit_scale.exp())

    def __call__(self, image: np.ndarray, class_ids: Sequence[int]) -> ClipEsCams:
        """`raw`: ReLU + min-max of the Grad-CAM; `refined`: after CAA (see the module docstring); both (P, h, w)."""
        class_ids = sorted({int(c) for c in class_ids})
        bad = [c for c in class_ids if not 1 <= c <= self.num_foreground]
        if bad:
            raise ValueError(f"class ids {bad} are outside 1..{self.num_foreground}")
        pixels = prepare_image(self.clip, image)
        grid = self.runner.grid_of(pixels)
        if not class_ids:
            empty = torch.zeros((0, *grid))
            return ClipEsCams([], empty, empty)
        layers = range(-self.settings.caa_layers, 0) if self.settings.refine != "none" else ()
        trace = self.runner.forward(pixels, capture_layers=layers, grad_from_layer=-1)
        activations = trace.blocks[self.runner.num_layers - 1].ln_1
        logits = image_logits(self.runner, trace.tokens[-1], self.text, self.logit_scale)
        present = torch.zeros((1, self.num_foreground), dtype=torch.bool)
        present[0, torch.tensor(class_ids) - 1] = True
        cams, _, _ = gradcams_of_present(activations, logits, present, grid)
        cams = cams.detach()
        score = minmax(cams.clamp_min(0), (-2, -1))
        refined = score
        if self.settings.refine != "none":
            affinity = trace_affinity([trace.blocks[i % self.runner.num_layers] for i in layers], self.settings)
            source = score if self.settings.refine == "score" else cams
            propagated = caa_refine(
                source,
                affinity,
                box_threshold=self.settings.box_threshold,
                box_source=score,
                normalize=False,
                reference_quirks=self.settings.reference_quirks,
            )
            refined = minmax(propagated.clamp_min(0), (-2, -1))
        return ClipEsCams(class_ids, score.cpu(), refined.cpu())
