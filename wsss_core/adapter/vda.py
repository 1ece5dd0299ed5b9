"""The `vda` adapter-learning method ("Beyond Text: Visual Description Assembly by Probabilistic Model", its appendix;
no public code): ExCEL's training (excel.py, training.py) with the LLM's attribute bank replaced by visual
prototypes that an invertible network and two Gaussian mixtures assemble from CLIP's own features (vda_model.py).

The schedule (appendix, section 1), 0-based iterations:
  [0, inn_from)           the template texts alone ("a clean origami {}." over CLIP-ES's words): ExCEL's loop
  [inn_from, intra_from)  + the network and the inter-class mixture learn from the batch's features (VOC 8k, COCO 20k)
  [intra_from, end)       + the intra-class mixture, and the labels come from CAMs fused with each image's
                          visual prototypes (VOC 8k + 2k, COCO 20k + 8k)
  loss = ExCEL's loss + gmm_weight * (inter-class loss + intra-class loss)
The mixtures' losses reach only the network and the mixtures (the features are detached); the prototypes reach
the head only through the labels. The run reads nothing but the index: no LLM, no descriptions file.

Published: the head and augmentation (ExCEL's/WeCLIP's), 6 coupling layers with ActNorm, the mixtures' form and
loss, the schedule's phases and lengths. Reconstructed (the appendix is silent; each a setting): the total length and
everything else in ExCEL's loop (ExCEL's values), the network's width (`inn_hidden`), attributes per class
(`intra_components`), the mixtures' weight and learning rate (`gmm_weight`, `inn_lr_scale`), and how the components
become prototypes and join the text CAMs (vda_model.py; `description_weight`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsss_core.adapter import excel
from wsss_core.adapter.excel import Fitted, IndexData
from wsss_core.adapter.settings import RUN_END, check_run
from wsss_core.params.spec import Schema, Spec

READS = None  # the index alone: `reads` names artifacts/index
LOSS_COLUMNS = ("loss", "seg_loss", "diversity_loss", "inter_loss", "intra_loss")

RECONSTRUCTED = "reconstruction, unpublished"
SETTINGS: Schema = {
    **{key: spec for key, spec in excel.SETTINGS.items() if key != "attribute_top_fraction" and key not in RUN_END},
    "inn_from": Spec(
        int, 8000, "iteration from which the network and the inter-class mixture train (VOC 8k, COCO 20k)", min=0
    ),
    "intra_from": Spec(
        int,
        10000,
        "iteration from which the intra-class mixture trains and the labels come from CAMs fused with visual "
        "prototypes (VOC 10k, COCO 28k)",
        min=0,
    ),
    "inn_layers": Spec(int, 6, "the invertible network's coupling layers, each followed by ActNorm", min=1),
    "inn_hidden": Spec(int, 512, f"width of the couplings' MLPs ({RECONSTRUCTED})", min=1),
    "intra_components": Spec(int, 10, f"intra-class components (attributes) per class ({RECONSTRUCTED})", min=1),
    "description_weight": Spec(
        float, 1.0, f"the visual prototypes' CAMs' weight against the text CAMs ({RECONSTRUCTED})", min=0.0
    ),
    "gmm_weight": Spec(float, 1.0, f"weight of the two mixtures' losses ({RECONSTRUCTED})", min=0.0),
    "inn_lr_scale": Spec(
        float, 10.0, f"lr multiplier of the network and the mixtures ({RECONSTRUCTED}; the x10 of every part)", min=0.0
    ),
    **RUN_END,
}

ARCHITECTURE_KEYS = (*excel.ARCHITECTURE_KEYS, "inn_layers", "inn_hidden", "intra_components", "description_weight")


def check_schedule(run: dict[str, Any], key: str) -> None:
    """The intra-class mixture cannot start before the network does."""
    from wsss_core.params import ParamsError

    if run["intra_from"] < run["inn_from"]:
        raise ParamsError(f"{key}.intra_from: {run['intra_from']} is before inn_from ({run['inn_from']})")


def build_model(clip, texts, num_foreground: int, run: dict[str, Any]):
    """The untrained model of a run, drawn from the run's seed without touching the global generator."""
    import torch

    from wsss_core.adapter.vda_model import VdaAdapterModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run["seed"])
        return VdaAdapterModel(clip, texts, num_foreground, **{name: run[name] for name in ARCHITECTURE_KEYS})


def make_step(run: dict[str, Any]):
    """The loss of one batch (with graph) and its parts, for training.train."""
    from wsss_core.adapter.training import excel_step

    def step_loss(model, images, present, step: int, settings):
        described = step >= run["intra_from"]

        def cams_of(out, present, cams):
            return model.described_cams(out, present, settings.schedule.dynamic(step)) if described else cams

        loss, parts, out, labels = excel_step(model, images, present, step, settings, cams_of=cams_of)
        inter = intra = None
        if step >= run["inn_from"]:
            inter, intra = model.mixture_losses(out.static_features, labels, intra=described)
            loss = loss + run["gmm_weight"] * (inter + intra)
        parts |= {
            name: 0.0 if value is None else float(value.detach())
            for name, value in (("inter_loss", inter), ("intra_loss", intra))
        }
        return loss, parts

    return step_loss


def fit(
    clip,
    run: dict[str, Any],
    dataset,
    reads: Path,
    *,
    key: str,
    device,
    work_dir: Path,
    checkpoint_every: int,
    on_step=None,
) -> Fitted:
    """Train run `run` (validated, under params key `key`) on the index `dataset`; the model keeps the prototypes its
    components assemble (vda_model.VdaAdapterModel.keep_prototypes)."""
    from dataclasses import replace

    from wsss_core.adapter.training import train
    from wsss_core.params import ParamsError

    blocks = len(clip.model.visual.transformer.resblocks)
    check_run(run, key, patch_size=clip.patch_size, blocks=blocks, layer_keys=("svc_layers", "caa_layers"))
    check_schedule(run, key)
    class_names = tuple(dataset.class_names)
    texts = excel.template_texts(clip, run, class_names, key)
    if texts.shape[1] % 2:
        raise ParamsError(f"{key}: the CLIP's embedding width {texts.shape[1]} is odd; coupling layers split it")
    model = build_model(clip, texts, len(class_names) - 1, run)
    settings = replace(excel.settings_of(run, checkpoint_every), extra_lr_scales=(("inn", run["inn_lr_scale"]),))
    curve = train(
        model,
        IndexData(dataset.samples),
        settings,
        device=device,
        work_dir=work_dir,
        on_step=on_step,
        description=key,
        step_loss=make_step(run),
    )
    model.keep_prototypes()
    kept = int(model.kept.sum())
    details = {"texts": int(texts.shape[0]), "foreground_texts": len(class_names) - 1, "prototype_classes": kept}
    return Fitted(model, curve, details)
