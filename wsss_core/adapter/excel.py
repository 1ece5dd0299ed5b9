"""The `excel` adapter-learning method (Yang et al., CVPR 2025; zwyang6/ExCEL): its run settings, with the reference's
defaults, and how a run is trained. Components: model.py (SVC + LVC + WeCLIP head), pseudo_labels.py, diversity.py,
training.py.

Where each default comes from (the reference's VOC run, scripts/train_voc.py unless named):
  texts            "a clean origami {}." over CLIP-ES's class synonyms and 25 background words, TSE with topK 0.9
                   (model/model_excel.py, model/load_attr.py, datasets/clip_text.py)
  svc_layers 5     reload_self_attn(layers=6) patches blocks -1..-5 (clip/clip_surgery_model.py)
  caa_layers 6     refine_cams_with_aff(attn_layers=6) (utils/affutils.py)
  iterations 30000, warmup 50, lr 1e-4 (x10 for every trained part), weight decay 0.01, poly power 1, warm-up ratio
                   1e-6 (--max_iters, --warmup_iters, --lr, --wt_decay, --power, --warmup_lr; engine/optimizer_engine)
  crop 320, batch 4, scales 0.5-2.0, flip  (--crop_size, --spg, rescale_range, img_fliplr)
  seg 1.0, diversity 0.1, radius 8         (--w_seg, --w_diver, --radius)
  dynamic_from 14000, seg_affinity_from 24000, box threshold 0.79   (the `n_iter >= ...` switches, caa_thre)
  background power 1, PAR 20 iterations at dilations 1, 2, 4, 8, 12, 24   (refine_cams_with_bkg_weclip, PAR(...))
  head 256 wide, 3 layers, 8 heads, dropout 0.1   (--embedding_dim, DecoderTransformer, SegFormerHead)
COCO (scripts/train_coco.py): 100k iterations, warm-up 200, dynamic_from 30000, box threshold 0.88, pair labels
                   always from the pseudo labels (seg_affinity_from >= iterations), 224 attributes (describe's
                   `clusters`).
head_tokens "reference": the per-block tokens ExCEL's head actually reads (clip/clip_surgery_model.py updates the
                   stored block outputs in place; adapter/visual.py), "original" for WeCLIP's intent.
Section-level keys (adapt.device, adapt.checkpoint_every) say where and how often, not what: dvc.yaml does not list
them, so changing them reruns nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsss_core.adapter.settings import LOOP_KEYS, RUN_END, check_run, head_settings, loop_settings
from wsss_core.cam.methods.excel import PAR_SETTINGS, TEXT_SETTINGS
from wsss_core.params.spec import Schema, Spec

READS = "descriptions"  # artifacts/descriptions_<describe run>: the attribute bank (bank.zarr)
LOSS_COLUMNS = ("loss", "seg_loss", "diversity_loss")  # the curve's columns (metrics/adapt_<run>/loss.csv)

SETTINGS: Schema = {
    **TEXT_SETTINGS,
    "svc_layers": Spec(int, 5, "SVC: the last blocks given the q-q/k-k/v-v dual path (LVC shifts all of them)", min=1),
    "caa_layers": Spec(int, 6, "CAA: the last blocks whose attention refines the CAMs into pseudo labels", min=1),
    **loop_settings(
        iterations=30000,
        lr=1e-4,
        iterations_help="training iterations (VOC 30k, COCO 100k)",
        lr_help="base learning rate (AdamW); the trained parts run at it times their scale",
    ),
    "adapter_lr_scale": Spec(
        float, 10.0, "lr multiplier of LVC's adapter, the head's per-layer MLPs and fusion (decoder_fts_fuse)", min=0.0
    ),
    "decoder_lr_scale": Spec(float, 10.0, "lr multiplier of the head's transformer layers and classifier", min=0.0),
    "dynamic_from": Spec(
        int, 14000, "iteration from which pseudo labels come from LVC's dynamic CAMs and the dynamic CAA", min=0
    ),
    "seg_affinity_from": Spec(
        int, 24000, "iteration from which the diversity loss's pair labels come from the segmentation argmax", min=0
    ),
    "box_threshold": Spec(float, 0.79, "CAA box threshold (times each CAM's max)", min=0.0, max=1.0),
    "reference_quirks": Spec(bool, False, "CAA boxes with the reference's 8-bit threshold and clipped box ends"),
    "background_power": Spec(float, 1.0, "pseudo labels: background score (1 - max CAM) ** power", min=0.0),
    **PAR_SETTINGS,
    **head_settings(
        "ExCEL's: its in-place dual path turns the block before the calibrated ones into the calibrated tokens, and "
        "each calibrated block but the last into the next one's pre-FFN state"
    ),
    **RUN_END,
}

# The keys that only say how a trained adapter is rebuilt (artifact.py reads them back from provenance).
ARCHITECTURE_KEYS = (
    *("svc_layers", "caa_layers", "embedding_dim", "transformer_layers", "heads", "dropout", "head_tokens"),
)


@dataclass
class Fitted:
    """A trained run: the model (on its device, eval mode), the curve rows, facts for the provenance and the weights
    it loaded besides the CLIP (name -> their provenance record)."""

    model: Any
    curve: list[dict[str, Any]]
    details: dict[str, Any]
    checkpoints: dict[str, Any] = field(default_factory=dict)


class IndexData:
    """Training images of a dataset index with their present classes, read from disk on demand."""

    def __init__(self, samples) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from wsss_core.data.base import read_image

        sample = self.samples[index]
        return read_image(sample.image_path), list(sample.labels)


def template_texts(clip, run: dict[str, Any], class_names: tuple[str, ...], key: str):
    """The unit texts (T, E) of the run's template over its class words (the C class rows first), then its background
    words: what ExCEL enriches, and DiCLIP's and VDA's texts as they are."""
    from wsss_core.models.clip_text import encode_text
    from wsss_core.prompts.vocabulary import run_prompts

    foreground, background = run_prompts(run, class_names, key)
    return encode_text(clip, foreground + background)


def enriched_texts(clip, run: dict[str, Any], class_names: tuple[str, ...], bank_dir: Path, key: str):
    """TSE texts (T, E), the C class rows first, from the run's words and the attribute bank in `bank_dir`."""
    import torch

    from wsss_core.cam.excel.attributes import aggregate_attributes
    from wsss_core.cam.methods.excel import read_attribute_bank

    text = template_texts(clip, run, class_names, key)
    num_foreground = len(class_names) - 1
    bank = read_attribute_bank(
        bank_dir, embed_dim=int(text.shape[1]), num_foreground=num_foreground, class_names=tuple(class_names[1:])
    )
    attributes = torch.from_numpy(bank).to(text.device)
    return aggregate_attributes(text, attributes, num_foreground, top_fraction=run["attribute_top_fraction"])


def build_model(clip, texts, num_foreground: int, run: dict[str, Any]):
    """The untrained model of a run, its head drawn from the run's seed without touching the global generator."""
    import torch

    from wsss_core.adapter.model import ExcelAdapterModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run["seed"])
        return ExcelAdapterModel(clip, texts, num_foreground, **{name: run[name] for name in ARCHITECTURE_KEYS})


def settings_of(run: dict[str, Any], checkpoint_every: int):
    """`AdaptSettings` from a validated run."""
    from wsss_core.adapter.pseudo_labels import PseudoLabelSettings, Schedule
    from wsss_core.adapter.training import AdaptSettings

    return AdaptSettings(
        **{name: run[name] for name in (*LOOP_KEYS, "seg_weight", "diversity_weight", "radius")},
        scale_range=tuple(run["scale_range"]),
        schedule=Schedule(dynamic_from=run["dynamic_from"], seg_affinity_from=run["seg_affinity_from"]),
        labels=PseudoLabelSettings(
            box_threshold=run["box_threshold"],
            reference_quirks=run["reference_quirks"],
            background_power=run["background_power"],
            par_dilations=tuple(run["par_dilations"]),
            par_iterations=run["par_iterations"],
        ),
        checkpoint_every=checkpoint_every,
    )


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
    """Train run `run` (validated, under params key `key`) on the dataset index `dataset` with the bank in `reads`."""
    from wsss_core.adapter.training import train

    blocks = len(clip.model.visual.transformer.resblocks)
    check_run(run, key, patch_size=clip.patch_size, blocks=blocks, layer_keys=("svc_layers", "caa_layers"))
    num_foreground = len(dataset.class_names) - 1
    texts = enriched_texts(clip, run, tuple(dataset.class_names), reads, key)
    model = build_model(clip, texts, num_foreground, run)
    curve = train(
        model,
        IndexData(dataset.samples),
        settings_of(run, checkpoint_every),
        device=device,
        work_dir=work_dir,
        on_step=on_step,
        description=key,
    )
    return Fitted(model, curve, {"texts": int(texts.shape[0]), "foreground_texts": num_foreground})
