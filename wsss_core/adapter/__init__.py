"""Adapter learning: single-stage training of light modules on a frozen CLIP, with pseudo labels made online from
the model's own CAMs (ExCEL; DiCLIP and VDA build on the same stage). One module per component:

  visual.py         one pass of the frozen CLIP: the original path (head input, CAA attention) and SVC's pieces
  lvc.py            LVC: the adapter features' similarity as a shift of SVC's attention
  diversity.py      the diversity loss (eq. 11) and its pair labels
  pseudo_labels.py  CAMs -> CAA -> background -> PAR -> labels, and the schedule's switches
  model.py          the trainable model: frozen CLIP, TSE texts, SVC + LVC, WeCLIP head
  training.py       the loop: AdamW, warm-up + poly, augmentation, AMP, checkpoints and exact resume
  artifact.py       the sealed artifact artifacts/adapter_<run>/ and its loaders
  excel.py          the `excel` method: run settings with the reference's defaults, and `fit`
  kv_adapter.py     DiCLIP's dynamic adapter, initialised from the SD cache's keys and values
  diclip_model.py   the trainable DiCLIP model: CLIP with SD's attention fused in, the dynamic adapter, WeCLIP head
  diclip.py         the `diclip` method: its run settings, labels (CAA + SD-attention refinement) and loss
  inn.py, gmm.py    VDA's invertible network (Real-NVP couplings + ActNorm) and Gaussian mixtures
  vda_model.py      the trainable VDA model: ExCEL's on template texts, the network and mixtures, the descriptions
  vda.py            the `vda` method: its run settings, schedule and loss

`ADAPT_METHODS` is the registry `adapt.runs.<name>.method` picks from. Every method module has:
  SETTINGS: Schema     its run keys besides the common ones (`RUN`)
  READS: str | None    the artifact family its `reads` names ("descriptions": artifacts/descriptions_<run>,
                       "sd_cache": artifacts/sd_cache_<run>; None: the index alone, artifacts/index)
  LOSS_COLUMNS         the columns of its loss curve (metrics/adapt_<run>/loss.csv)
  fit(clip, run, dataset, reads, *, key, device, work_dir, checkpoint_every, on_step) -> Fitted
  build_model(clip, texts, num_foreground, run)  the untrained model (artifact.py loads weights into it)
The stage is wsss_core/drivers/adapt.py.
"""

from __future__ import annotations

from wsss_core.adapter import diclip, excel, vda
from wsss_core.params.spec import Schema, Spec

RUN: Schema = {
    # Required, like every key dvc.yaml interpolates: DVC reads the file, not these defaults.
    "reads": Spec(
        str,
        None,
        "the artifact the run reads besides the index: excel, artifacts/descriptions_<a describe run>; diclip, "
        "artifacts/sd_cache_<an sd_cache run>; vda, artifacts/index (it reads nothing else)",
    ),
}

ADAPT_METHODS = {
    "excel": excel,
    "diclip": diclip,
    "vda": vda,
}
