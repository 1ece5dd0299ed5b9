"""The `diclip` adapter-learning method (zwyang6/DiCLIP scripts/train_voc.py): single-stage training of DiCLIP's
dynamic adapter and WeCLIP head on the frozen CLIP with Stable Diffusion's attention fused in (diclip_model.py),
on labels made each iteration from the model's own CAMs:

  1. CAMs: the patch-text CAM fused with the dynamic adapter's maps (weight 0.1; the static retrieval, weight 0.5,
     before `dynamic_from`: VOC uses the dynamic maps from the first iteration, COCO from 60k);
  2. CAA at box threshold 0.79 on the last 6 layers, static, then from `caa_affinity_from` (VOC 4k, COCO 40k) the
     dynamic form with the head's affinity prediction (wsss_core/adapter/pseudo_labels.caa_transition);
  3. the recursive refinement by SD's 40x40 attention (5 rounds VOC, 10 COCO) to the crop through the 512 x 512
     intermediate, each class min-maxed, then the argmax against (1 - max)^1 (cam_to_label_iseg): hard labels, no
     ignore region.
  loss = seg_weight * seg + diversity_weight * diversity + dynamic_weight_loss * dynamic       (1.0, 0.1, 0.1)
seg and dynamic are get_seg_loss on the head's and the adapter's logits upsampled to the crop; the diversity loss's
pair labels come from these labels, or from `seg_affinity_from` (VOC 34k, never reached; COCO 80k) from the head's
argmax. Optimiser, schedule, augmentation, AMP and exact resume are ExCEL's loop (training.py): AdamW with every trained
part at 10 x lr (lr 2e-4 VOC, 1e-4 COCO), 50 (COCO 200) warm-up iterations from 1e-6, poly 1; crops of 320, batches
of 4. The run reads an sd_cache artifact: its keys and values initialise the adapter, and the SD pipeline its masks
were made with (its provenance records it) gives VCE's attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsss_core.adapter.excel import Fitted, IndexData, template_texts
from wsss_core.adapter.settings import LOOP_KEYS, RUN_END, check_run, head_settings, loop_settings
from wsss_core.cam.methods.diclip import KERNEL, TEXTS
from wsss_core.params.spec import Schema, Spec

READS = "sd_cache"  # artifacts/sd_cache_<run>: keys, values, and the SD pipeline VCE reads
LOSS_COLUMNS = ("loss", "seg_loss", "diversity_loss", "dynamic_loss")

SETTINGS: Schema = {
    **TEXTS,
    **{key: spec for key, spec in KERNEL.items() if key != "caa"},  # CAA always makes the labels
    "box_threshold": Spec(float, 0.79, "CAA box threshold of the labels (times each CAM's max)", min=0.0, max=1.0),
    "refine_iterations": Spec(int, 5, "recursive refinement rounds of the labels (VOC 5, COCO 10)", min=1),
    "retrieval_weight": Spec(float, 0.5, "static retrieval's weight in the CAMs before dynamic_from", min=0.0),
    "dynamic_cam_weight": Spec(float, 0.1, "the adapter's ReLU'd maps' weight in the CAMs from dynamic_from", min=0.0),
    "adapter_size": Spec(int, 312, "hidden units of the dynamic adapter (VOC 312, COCO 512)", min=1),
    **loop_settings(
        iterations=20000,
        lr=2e-4,
        iterations_help="training iterations (VOC 20k, COCO 100k)",
        lr_help="base learning rate (AdamW; VOC 2e-4, COCO 1e-4); both parts run at it times 10",
    ),
    "adapter_lr_scale": Spec(float, 10.0, "lr multiplier of the dynamic adapter", min=0.0),
    "decoder_lr_scale": Spec(float, 10.0, "lr multiplier of the head (fusion front and decoder)", min=0.0),
    "dynamic_weight": Spec(float, 0.1, "weight of the dynamic adapter's segmentation loss", min=0.0),
    "dynamic_from": Spec(int, 0, "iteration from which the CAMs use the dynamic adapter (VOC 0, COCO 60k)", min=0),
    "caa_affinity_from": Spec(
        int, 4000, "iteration from which CAA is weighted by the head's affinity (VOC 4k, COCO 40k)", min=0
    ),
    "seg_affinity_from": Spec(
        int, 34000, "iteration from which the diversity pairs come from the head's argmax (VOC 34k, COCO 80k)", min=0
    ),
    **head_settings("DiCLIP's in-place dual path, as ExCEL's"),
    **RUN_END,
}

# The keys that say how a trained model is rebuilt (artifact.py reads them back from provenance).
ARCHITECTURE_KEYS = ("adapter_size", "embedding_dim", "transformer_layers", "heads", "dropout", "head_tokens")


@dataclass(frozen=True)
class DiclipSchedule:
    """When DiCLIP's training switches (0-based iterations)."""

    dynamic_from: int = 0
    caa_affinity_from: int = 4000
    seg_affinity_from: int = 34000


def vce_settings(run: dict[str, Any]):
    from wsss_core.cam.methods.diclip import diclip_settings

    return diclip_settings(run, caa=True, store_resolution="image")


def build_model(clip, texts, num_foreground: int, run: dict[str, Any], *, sd=None, cache=None):
    """The model of a run, its head and adapter drawn from the run's seed without touching the global generator
    (without `cache`, the adapter keeps its layers' own initialisation: a model rebuilt to load trained weights)."""
    import torch

    from wsss_core.adapter.diclip_model import DiclipAdapterModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run["seed"])
        return DiclipAdapterModel(
            clip,
            texts,
            num_foreground,
            vce=vce_settings(run),
            sd=sd,
            cache=cache,
            dynamic_weight=run["dynamic_cam_weight"],
            retrieval_weight=run["retrieval_weight"],
            **{name: run[name] for name in ARCHITECTURE_KEYS},
        )


def labels_from_cams(
    cams,
    attentions,
    refine_attention,
    class_ids: Sequence[Sequence[int]],
    size: tuple[int, int],
    run: dict[str, Any],
    seg_affinity=None,
):
    """Labels (B, H, W) int64 of a batch: CAA, the recursive refinement to `size`, argmax against (1 - max)^1.

    cams (B, C, h, w), attentions (L, B, N, N), refine_attention (B, heads, M, M), seg_affinity (B, hw, hw) or None.
    """
    import torch

    from wsss_core.adapter.pseudo_labels import caa_transition
    from wsss_core.cam.caa import caa_refine
    from wsss_core.cam.diclip.cams import LABEL_EPSILON
    from wsss_core.cam.diclip.recursive import recursive_refinement, refined_cams
    from wsss_core.cam.excel.cams import minmax_per_map

    labels = []
    for item, present in enumerate(class_ids):
        present = sorted({int(c) for c in present})
        if not present:
            labels.append(torch.zeros(size, dtype=torch.long, device=cams.device))
            continue
        transition = caa_transition(attentions[:, item], None if seg_affinity is None else seg_affinity[item])
        maps = caa_refine(
            cams[item, [c - 1 for c in present]].float(),
            transition,
            box_threshold=run["box_threshold"],
            normalize=False,
            reference_quirks=run["reference_quirks"],
        )
        refined = recursive_refinement(
            maps, refine_attention[item], iterations=run["refine_iterations"], heads=run["refine_heads"]
        )
        maps = minmax_per_map(refined_cams(refined, range(len(present)), len(present), size), LABEL_EPSILON)
        scores = torch.cat([1 - maps.amax(dim=0, keepdim=True), maps])
        keys = torch.tensor([0, *present], dtype=torch.long, device=scores.device)
        labels.append(keys[scores.argmax(dim=0)])
    return torch.stack(labels)


def make_step(run: dict[str, Any]):
    """The loss of one batch (with graph) and its parts, for training.train."""
    import torch
    import torch.nn.functional as F

    from wsss_core.adapter.diversity import affinity_targets, diversity_loss
    from wsss_core.adapter.training import excel_seg_loss

    schedule = DiclipSchedule(run["dynamic_from"], run["caa_affinity_from"], run["seg_affinity_from"])

    def step_loss(model, images, present, step: int, settings):
        use_amp = settings.amp and images.device.type == "cuda"
        with torch.autocast(device_type=images.device.type, dtype=torch.float16, enabled=use_amp):
            out = model(images, dynamic=step >= schedule.dynamic_from)
        seg_affinity = out.affinity.detach() if step >= schedule.caa_affinity_from else None
        size = tuple(images.shape[-2:])
        with torch.no_grad():
            labels = labels_from_cams(
                out.cams, out.attentions.float(), out.refine_attention, present, size, run, seg_affinity
            )

        def upsampled(logits):
            return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)

        logits = upsampled(out.logits)
        seg = excel_seg_loss(logits, labels)
        dynamic = excel_seg_loss(upsampled(out.dynamic_logits), labels)
        pairs = logits.detach().argmax(dim=1) if step >= schedule.seg_affinity_from else labels
        diversity = diversity_loss(out.affinity, affinity_targets(pairs, tuple(out.logits.shape[-2:]), run["radius"]))
        loss = run["seg_weight"] * seg + run["diversity_weight"] * diversity + run["dynamic_weight"] * dynamic
        parts = {"seg_loss": float(seg.detach()), "diversity_loss": float(diversity.detach())}
        return loss, parts | {"dynamic_loss": float(dynamic.detach())}

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
    """Train run `run` (validated, under params key `key`) on the index `dataset` with the sd_cache in `reads`."""
    import torch

    from wsss_core.adapter.training import AdaptSettings, train
    from wsss_core.cam.diclip.cache import read_cache
    from wsss_core.cam.methods.diclip import load_cache_diffusion
    from wsss_core.params import ParamsError

    blocks = len(clip.model.visual.transformer.resblocks)
    check_run(run, key, patch_size=clip.patch_size, blocks=blocks, layer_keys=("fused_layers", "caa_layers"))
    class_names = tuple(dataset.class_names)
    texts = template_texts(clip, run, class_names, key)
    cache, cache_provenance = read_cache(reads, embed_dim=int(texts.shape[1]), class_names=class_names)
    if len(cache.keys) > run["adapter_size"]:
        raise ParamsError(f"{key}.adapter_size: {run['adapter_size']} is below the cache's {len(cache.keys)} keys")
    record = cache_provenance["checkpoints"]["vce"]
    sd = load_cache_diffusion(record, device, str(reads))
    keys, values = (torch.from_numpy(array.copy()) for array in (cache.keys, cache.values))
    model = build_model(clip, texts, len(class_names) - 1, run, sd=sd, cache=(keys, values))
    settings = AdaptSettings(
        **{name: run[name] for name in LOOP_KEYS},
        scale_range=tuple(run["scale_range"]),
        checkpoint_every=checkpoint_every,
    )
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
    details = {"texts": int(texts.shape[0]), "foreground_texts": len(class_names) - 1, "keys": int(len(cache.keys))}
    return Fitted(model, curve, details, checkpoints={"vce": record})
