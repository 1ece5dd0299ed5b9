"""The sections of params.yaml: every key the pipeline reads, with its type, default, allowed values and meaning,
so a typo or a wrong value fails at once with a message naming the key. Stage families (`MapOf`) hold one entry per
DVC stage; CAM methods declare their own run settings (wsss_core/cam/methods).
"""

from __future__ import annotations

from wsss_core.adapter import ADAPT_METHODS
from wsss_core.adapter import RUN as ADAPT_RUN
from wsss_core.cam.methods import CAM_METHODS
from wsss_core.cam.methods.common import RUN as CAM_RUN
from wsss_core.cam.methods.diclip import KERNEL as DICLIP_KERNEL
from wsss_core.cam.methods.diclip import TEXTS as DICLIP_TEXTS
from wsss_core.camnet import CAM_NETS
from wsss_core.params.spec import MapOf, Schema, Spec
from wsss_core.prompts.vocabulary import BACKGROUND_WORD_CHOICES, CACHE_WORD_CHOICES, CLASS_WORD_CHOICES

DATASET: Schema = {
    "kind": Spec(str, "synthetic", "dataset layout", choices=("synthetic", "voc", "coco", "folder")),
    "root": Spec(str, "data/demo", "dataset root directory (the demo pipeline generates data/demo)"),
    "train_split": Spec(str, "train", "split whose seeds are generated from image-level labels"),
    "eval_split": Spec(str, "val", "split on which final predictions are evaluated"),
    "label_source": Spec(
        str,
        "gt_masks",
        "where image-level labels come from; papers differ, so it is recorded in provenance",
        choices=("gt_masks", "xml", "csv"),
    ),
}

MODELS: Schema = {
    "clip": {
        "arch": Spec(str, "ViT-B-16", "open_clip architecture"),
        "pretrained": Spec(str, "openai", "open_clip pretrained tag (downloads once when online)", nullable=True),
        "checkpoint": Spec(str, None, "local weights file; takes precedence over downloading", nullable=True),
        "sha256": Spec(str, None, "expected sha256 of the checkpoint file", nullable=True),
        "model_cfg": Spec(
            dict, None, "open_clip config (embed_dim, vision_cfg, text_cfg) of a custom architecture", nullable=True
        ),
        "random_init": Spec(bool, False, "random weights on purpose (tests, demos without weights)"),
        "seed": Spec(int, 0, "seed of random weights", min=0),
    },
}

CAMS: Schema = {
    "device": Spec(str, "auto", "auto (CUDA when present), cpu, cuda, cuda:N"),
    "runs": MapOf(
        CAM_RUN,
        "CAM runs; each becomes artifacts/cams_<name>.zarr (method: a key of wsss_core.cam.methods.CAM_METHODS)",
        kind_key="method",
        kinds={name: module.SETTINGS for name, module in CAM_METHODS.items()},
    ),
}

# Dense CRF (pydensecrf) on the uint8 image, CLIP-ES's settings: seeds and predictions share them.
CRF_KERNELS: Schema = {
    "iterations": Spec(int, 10, "mean-field iterations", min=1),
    "gaussian_sxy": Spec(float, 1.0, "Gaussian kernel spatial std", min=0.0),
    "gaussian_compat": Spec(float, 3.0, "Gaussian kernel weight", min=0.0),
    "bilateral_sxy": Spec(float, 67.0, "bilateral kernel spatial std", min=0.0),
    "bilateral_srgb": Spec(float, 3.0, "bilateral kernel colour std", min=0.0),
    "bilateral_compat": Spec(float, 4.0, "bilateral kernel weight", min=0.0),
}

# CPU runs that must give the same bits on other machines (the demo's training stages) pin the float code paths.
PINNED_CPU = Spec(
    bool,
    False,
    "pin the CPU's float code paths (wsss_core/pinned_cpu.py: AVX2 kernels, 2 threads) so that CPU runs give the same "
    "bits on every Intel CPU with AVX2 (not across vendors: MKL's AVX2 branch is Intel's only)",
)

SEED_VARIANT: Schema = {
    "cams": Spec(str, None, "CAM artifact the seeds come from: cams_<a key of cams.runs>"),
    "background": Spec(
        str, "power", "background score: (1 - max CAM)^value, or a constant", choices=("power", "threshold")
    ),
    "background_value": Spec(float, 1.0, "alpha (power) or the constant (threshold)", min=0.0),
    "crf": {
        "enabled": Spec(bool, False, "refine with a dense CRF (pydensecrf)"),
        **CRF_KERNELS,
        "confidence": Spec(float, 0.95, "pixels whose CRF probability is below this become 255", min=0.0, max=1.0),
        "unary": Spec(
            str,
            "scores",
            "scores: -log of [background, CAMs] (CLIP-ES) | labels: their argmax at probability gt_prob (WeakTr)",
            choices=("scores", "labels"),
        ),
        "gt_prob": Spec(float, 0.7, "unary labels: the probability of each pixel's argmax", min=0.01, max=0.99),
    },
}

SEEDS: Schema = {
    "variants": MapOf(SEED_VARIANT, "seed variants; each becomes artifacts/seeds_<name>.zarr and is evaluated"),
    "sams": {
        "variants": MapOf(
            {
                "cams": SEED_VARIANT["cams"],
                "masks": Spec(str, None, "the masks the quasi-superpixels come from: a key of sam_masks.runs"),
                "alpha": Spec(
                    float,
                    0.6,
                    "background score of a quasi-superpixel: (1 - its best class score)^alpha "
                    "(FMA-WSSS: 0.6 coarse VOC, 0.7 fine VOC, 1.0 COCO)",
                    min=0.0,
                ),
            },
            "SAMS seed variants (FMA-WSSS): classes assigned per quasi-superpixel of artifacts/masks_<masks>; "
            "each becomes artifacts/seeds_<name>.zarr and is evaluated",
        ),
    },
}

EVALUATE: Schema = {
    "ignore_index": Spec(
        int, 255, "label value skipped in GT and counted as unlabelled in predictions", min=0, max=255
    ),
    "oracle_background_powers": Spec(
        list,
        [0.5, 1.0, 2.0, 3.0],
        "for seeds made from CAMs: also report the best background power chosen WITH GT, flagged as oracle",
        item=float,
        min=0.0,
    ),
}


SAM_MASKS_RUN: Schema = {
    "generator": Spec(
        str,
        "sam",
        "sam (segment-anything automatic masks) | felzenszwalb (classical over-segmentation, needs no weights)",
        choices=("sam", "felzenszwalb"),
    ),
    "eval_split": Spec(bool, True, "also compute masks for dataset.eval_split (SAMS post-processing of predictions)"),
    "part_images": Spec(
        int, None, "images per part file; null: at most 128 parts of at least 8 images", nullable=True, min=1
    ),
    "overlays": Spec(
        int, 4, "images per split drawn to reports/masks_<name>/ (masks by level, quasi-superpixels)", min=0
    ),
    "sam": {
        "model_type": Spec(
            str,
            "vit_h",
            "vit_h | vit_l | vit_b (official) | custom (model_cfg)",
            choices=("vit_h", "vit_l", "vit_b", "custom"),
        ),
        "checkpoint": Spec(str, "checkpoints/sam_vit_h_4b8939.pth", "SAM weights file (sha256-checked)", nullable=True),
        "sha256": Spec(str, None, "expected sha256 (official file names are checked anyway)", nullable=True),
        "model_cfg": Spec(dict, None, "build_sam_from_config arguments for model_type custom", nullable=True),
        "random_init": Spec(bool, False, "custom only: random weights on purpose (tests)"),
        "seed": Spec(int, 0, "seed of random weights", min=0),
        "points_per_side": Spec(int, 32, "point grid per side (points_per_side**2 prompts per crop)", min=1),
        "points_per_batch": Spec(int, 64, "points run through the mask decoder at once (speed/memory only)", min=1),
        "pred_iou_thresh": Spec(float, 0.86, "keep masks whose predicted IoU exceeds this", min=0.0, max=1.0),
        "stability_score_thresh": Spec(float, 0.92, "keep masks at least this stable", min=0.0, max=1.0),
        "stability_score_offset": Spec(float, 1.0, "logit offset of the stability score", min=0.0),
        "box_nms_thresh": Spec(float, 0.7, "box IoU of the per-crop NMS", min=0.0, max=1.0),
        "crop_n_layers": Spec(int, 1, "layers of image crops (layer i has 4**i crops)", min=0),
        "crop_nms_thresh": Spec(float, 0.7, "box IoU of the NMS between crops", min=0.0, max=1.0),
        "crop_overlap_ratio": Spec(float, 512 / 1500, "overlap of neighbouring crops", min=0.0, max=1.0),
        "crop_n_points_downscale_factor": Spec(int, 2, "points per side shrink by this per crop layer", min=1),
        "min_mask_region_area": Spec(int, 100, "fill holes and drop islands smaller than this (pixels); 0: off", min=0),
    },
    "fma": {
        "whole_iou_bonus": Spec(
            float, 0.1, "(1) whole masks pass when predicted_iou + bonus > pred_iou_thresh; 0: SAM's rule", min=0.0
        ),
        "whole_nms_bonus": Spec(
            float, 1.0, "(2) per-crop NMS scores whole masks predicted_iou + bonus, so they win; 0: SAM's rule", min=0.0
        ),
        "occupation_filter": Spec(
            bool, True, "(3) keep whole, then part, then subpart masks occupied < t_r by kept ones (both generators)"
        ),
        "t_r": Spec(float, 0.3, "occupation threshold of the filter", min=0.0, max=1.0),
    },
    "felzenszwalb": {
        "scales": Spec(
            list,
            [100.0, 400.0, 1600.0],
            "k of the subpart, part and whole level (pixel values 0..255)",
            item=float,
            length=3,
            min=0.0,
        ),
        "sigma": Spec(float, 0.8, "Gaussian smoothing before segmenting", min=0.0),
        "min_size": Spec(int, 20, "smallest segment in pixels", min=1),
    },
}


SAM_MASKS: Schema = {
    "device": Spec(str, "auto", "auto (CUDA when present), cpu, cuda, cuda:N (not recorded: shards may differ)"),
    "runs": MapOf(SAM_MASKS_RUN, "class-agnostic mask sets; each becomes artifacts/masks_<name>"),
}


def _optimizer_specs(
    kind: str, lr: float, backbone_scale: float, head_scale: float, decay: float, nesterov: bool, loss: str
) -> Schema:
    """The optimiser keys every network section carries, with that network's reference defaults."""
    return {
        "optimizer": Spec(str, kind, "adamw (betas 0.9, 0.999) | sgd", choices=("adamw", "sgd")),
        "lr": Spec(float, lr, "base learning rate: warm-up, then poly decay", min=0.0),
        "backbone_lr_scale": Spec(float, backbone_scale, "lr multiplier of pretrained weights (0 freezes)", min=0.0),
        "head_lr_scale": Spec(float, head_scale, "lr multiplier of the new layers", min=0.0),
        "weight_decay": Spec(float, decay, "weight decay", min=0.0),
        "momentum": Spec(float, 0.9, "SGD momentum", min=0.0, max=1.0),
        "nesterov": Spec(bool, nesterov, "SGD with Nesterov momentum"),
        "loss": Spec(
            str,
            loss,
            "ce | balanced_ce (mean of bg and fg CE, the CLIP heads') | gradient_clipping (WeakTr)",
            choices=("ce", "balanced_ce", "gradient_clipping"),
        ),
    }


def _backbone_weight_specs(what: str) -> Schema:
    return {
        "checkpoint": Spec(str, None, f"local {what} weights file", nullable=True),
        "sha256": Spec(str, None, "expected sha256 of the checkpoint", nullable=True),
        "random_init": Spec(bool, False, "random backbone weights on purpose (tests, demos without weights)"),
    }


PREDICTION: Schema = {
    # Required, like every key dvc.yaml interpolates: DVC reads the file, not these defaults.
    "segmenter": Spec(
        str,
        None,
        "the trained model that predicts: artifacts/segmenter_<a key of retrain.runs>, or "
        "artifacts/adapter_<a key of adapt.runs> (ExCEL: the adapter's WeCLIP head, no retraining)",
    ),
    "scales": Spec(list, [1.0], "image scales whose scores are averaged", item=float, min=0.1, max=4.0),
    "flip": Spec(bool, False, "also average horizontally flipped views"),
    "unflipped_scales": Spec(
        list,
        [],
        "scales whose flipped view is left out even with flip (ExCEL's VOC script: [1.0]); each scale's views are "
        "averaged first, then the scales",
        item=float,
        min=0.1,
        max=4.0,
    ),
    "resize": Spec(
        str,
        "keep_aspect",
        "keep_aspect: a view is the image times its scale | square: a square of input_size times the scale, whatever "
        "the aspect (ExCEL)",
        choices=("keep_aspect", "square"),
    ),
    "input_size": Spec(int, 320, "resize square: the side at scale 1.0 (ExCEL: 320)", min=1),
    "merge": Spec(
        str,
        "softmax",
        "softmax: average the views' class probabilities | logits: average their logits, then one softmax (ExCEL)",
        choices=("softmax", "logits"),
    ),
    "window": Spec(int, 0, "sliding window side in pixels; 0 runs each view whole", min=0),
    "stride": Spec(int, 0, "sliding window stride in pixels (0 < stride <= window)", min=0),
    "amp": Spec(bool, True, "fp16 autocast on CUDA only"),
    "postprocess": Spec(str, "none", "none (argmax) | crf | sams (SAM masks)", choices=("none", "crf", "sams")),
    "crf": CRF_KERNELS,
    "sams": {
        "alpha": Spec(float, 1.0, "background power (1 - max score)^alpha", min=0.0),
    },
    "reads": Spec(
        str,
        None,
        "the artifact read besides the segmenter and the index: for postprocess sams the masks "
        "(artifacts/masks_<a key of sam_masks.runs>, with its eval split); otherwise the segmenter again",
    ),
}

# Each network's section of a retrain run (`retrain.runs.<name>.<network>`), with that network's reference defaults.
NETWORK_SECTIONS: dict[str, Schema] = {
    "weclip_head": {
        "feature_layers": Spec(
            int, None, "CLIP blocks feeding the head, the last N; null: all (12 on ViT-B/16)", nullable=True, min=1
        ),
        "embedding_dim": Spec(int, 256, "width of the fused features and transformer layers", min=8),
        "transformer_layers": Spec(int, 3, "pre-LN transformer layers", min=0),
        "heads": Spec(int, 8, "attention heads", min=1),
        "dropout": Spec(float, 0.1, "Dropout2d after the fusion conv", min=0.0, max=1.0),
        **_optimizer_specs("adamw", 2e-4, 0.0, 10.0, 0.01, False, "balanced_ce"),
    },
    "deeplabv3plus": {
        "blocks": Spec(
            list, [3, 4, 23, 3], "Bottleneck blocks per stage ([3, 4, 23, 3]: ResNet-101)", item=int, length=4, min=1
        ),
        "output_stride": Spec(int, 8, "output stride (ASPP rates 12/24/36 at 8, 6/12/18 at 16)", choices=(8, 16)),
        **_backbone_weight_specs("torchvision ImageNet ResNet"),
        **_optimizer_specs("sgd", 0.01, 1.0, 1.0, 5e-4, False, "ce"),
    },
    "weaktr": {
        "encoder": Spec(str, "deit_small_patch16_224", "timm ViT architecture"),
        "encoder_cfg": Spec(dict, None, "timm config overrides, e.g. {embed_dim, depth, num_heads}", nullable=True),
        **_backbone_weight_specs("ViT/DeiT"),
        "decoder_layers": Spec(int, 2, "mask-transformer decoder layers", min=1),
        "dropout": Spec(float, 0.1, "decoder dropout", min=0.0, max=1.0),
        "drop_path_rate": Spec(float, 0.1, "encoder stochastic depth", min=0.0, max=1.0),
        **_optimizer_specs("sgd", 1e-4, 0.1, 1.0, 0.0, True, "gradient_clipping"),
    },
}

# What decides a retrain run's weights; its network's section (the kind) comes with it.
RETRAIN_RUN: Schema = {
    # Required, like every key dvc.yaml interpolates: DVC reads the file, not these defaults.
    "seeds": Spec(str, None, "seed variant trained on: a key of seeds.variants or seeds.sams.variants"),
    "amp": Spec(bool, True, "fp16 autocast (and loss scaling) on CUDA only"),
    "seed": Spec(int, 0, "seed of new layers, batch order, augmentation and dropout", min=0),
    "schedule": {
        "iterations": Spec(int, 30000, "training updates", min=1),
        "batch_size": Spec(int, 4, "images per update", min=1),
        "crop_size": Spec(int, 320, "square training crop; smaller images are padded with ignored pixels", min=16),
        "scale_range": Spec(
            list, [0.5, 2.0], "random rescale before cropping", item=float, length=2, min=0.05, max=8.0
        ),
        "flip": Spec(bool, True, "random horizontal flips"),
        "warmup_iterations": Spec(int, 50, "linear warm-up updates", min=0),
        "warmup_ratio": Spec(float, 1e-6, "lr multiplier at the first warm-up update", min=0.0, max=1.0),
        "poly_power": Spec(float, 1.0, "poly decay power after warm-up (1.0 WeCLIP, 0.9 DeepLab)", min=0.0),
    },
    "gradient_clipping": {
        "tau": Spec(float, 1.2, "start value: clipping only once the mean CE is <= tau (WeakTr)", min=0.0),
        "patch": Spec(int, 120, "side S of the gradient patches (pixels)", min=1),
    },
}

RETRAIN: Schema = {
    # Section-level keys say where and how often, not what: the same for every run.
    "device": Spec(str, "auto", "auto (CUDA when present), cpu, cuda, cuda:N; for training and prediction"),
    "pinned_cpu": PINNED_CPU,
    "checkpoint_every": Spec(
        int, 500, "updates between resumable checkpoints (a killed run resumes from the last)", min=1
    ),
    "runs": MapOf(
        RETRAIN_RUN,
        "segmentation networks trained on seeds; each becomes artifacts/segmenter_<name> (network: weclip_head "
        "(frozen CLIP) | deeplabv3plus (ResNet) | weaktr (ViT + gradient clipping), with its own section)",
        kind_key="network",
        kinds={name: {name: section} for name, section in NETWORK_SECTIONS.items()},
    ),
    "predict": {
        "variants": MapOf(
            PREDICTION,
            "inference settings; each becomes artifacts/predictions_<name>.zarr on the eval split, evaluated",
        ),
    },
}


# ExCEL's text semantic enrichment: n descriptions per class, prefixed, CLIP-encoded, clustered into an attribute bank.
# The template is our own wording; like the paper's GPT-4 instruction, it asks for visual facts written as sentences
# that read on after the prefix ("a clean origami aeroplane. it has wings that ...").
DESCRIBE_PROMPT_TEMPLATE = (
    'Give {n} different visual descriptions of the object class "{class_name}": its outline and shape, its parts, '
    "its usual colours, size, materials and surface textures, and what sets it apart from other objects. Write each "
    'as one short sentence that starts with "it" and reads on after "Here is a {class_name}." without naming the '
    "class again. Answer with a numbered list of exactly {n} lines and nothing else."
)

DESCRIBE_OPENAI: Schema = {
    "base_url": Spec(
        str,
        "https://api.openai.com/v1",
        "chat-completions server: POST {base_url}/chat/completions (OpenAI, vLLM, llama.cpp, Ollama's /v1)",
    ),
    "model": Spec(str, None, "model name the server knows (required)", nullable=True),
    "api_key_env": Spec(
        str,
        "OPENAI_API_KEY",
        "NAME of the environment variable holding the API key (unset or null: no key, for local servers); the key "
        "itself is never read from params nor written anywhere",
        nullable=True,
    ),
    "temperature": Spec(float, 0.0, "sampling temperature", min=0.0, max=2.0),
    "seed": Spec(int, 0, "sampling seed sent to the server (null: none sent; some servers ignore it)", nullable=True),
    "max_tokens": Spec(int, 2048, "longest answer, in tokens", min=1),
    "prompt_template": Spec(
        str, DESCRIBE_PROMPT_TEMPLATE, "the user message; {class_name} and {n} are filled in per class"
    ),
    "retries": Spec(int, 5, "retries after a 429, a 5xx or a connection error, then the stage fails", min=0),
    "backoff_seconds": Spec(float, 1.0, "wait before retry k (from 0) is backoff_seconds * 2**k", min=0.0),
    "timeout_seconds": Spec(float, 120.0, "per request", min=0.001),
}

DESCRIBE: Schema = {
    "device": Spec(str, "auto", "where the CLIP text encoder runs: auto (CUDA when present), cpu, cuda, cuda:N"),
    "runs": MapOf(
        {
            "reads": Spec(
                str,
                None,
                "source file: the descriptions file (YAML or JSON: class name -> n sentences); "
                "source openai: artifacts/index (the class names)",
            ),
            "n": Spec(int, 20, "descriptions per class", min=1),
            "prefix": Spec(
                str,
                "a clean origami {class_name}. ",
                "put before every description ({class_name} filled in); the text is then lower-cased, as ExCEL does",
            ),
            "clusters": Spec(int, 112, "attributes B of the bank, KMeans clusters (ExCEL: 112 VOC, 224 COCO)", min=1),
            "random_state": Spec(int, 0, "KMeans seed", min=0),
            "n_init": Spec(int, 10, "KMeans restarts (ExCEL's scikit-learn 1.0.2 default)", min=1),
        },
        "attribute banks (ExCEL); each becomes artifacts/descriptions_<name> (source: where descriptions come from)",
        kind_key="source",
        kinds={"openai": {"openai": DESCRIBE_OPENAI}, "file": {}},
    ),
}


def _learn_task(design: str, init_std: float, losses: tuple[str, ...], iterations: int) -> Schema:
    return {
        "prompt_design": Spec(
            str,
            design,
            "prompt design (FMA-WSSS Table 2)",
            choices=("unified_context", "csc_append_bg_words", "csc_prepend_bg_words", "csc_prepend"),
        ),
        "n_ctx": Spec(int, 16, "learnable context vectors per prompt", min=1),
        "init_std": Spec(float, init_std, "std of the N(0, std) context initialisation", min=0.0),
        "loss": Spec(str, losses[0], "task loss (FMA-WSSS Table 5 alternatives)", choices=losses),
        "iterations": Spec(int, iterations, "training iterations; the cosine schedule spans them", min=1),
        "stop_after": Spec(
            int,
            None,
            "stop at this iteration of the schedule (the reference's released checkpoints)",
            min=1,
            nullable=True,
        ),
    }


LEARN: Schema = {
    "device": Spec(str, "auto", "auto (CUDA when present), cpu, cuda, cuda:N"),
    "amp": Spec(bool, True, "fp16 autocast and gradient scaling on CUDA (the reference trained with AMP)"),
    "workers": Spec(int, 0, "data-loading worker processes (batches do not depend on it)", min=0),
    "checkpoint_every": Spec(int, 100, "iterations between resumable checkpoints", min=1),
    "store_dtype": Spec(str, "float16", "dtype of the stored prompts", choices=("float16", "float32")),
    "class_names": Spec(str, "dataset", "words naming the foreground classes", choices=CLASS_WORD_CHOICES),
    "background_words": Spec(
        str,
        "clip_es_voc",
        "background words (or only their number, for pure-context prompts)",
        choices=BACKGROUND_WORD_CHOICES,
    ),
    "training": {
        "seed": Spec(int, 0, "seed of the context initialisation, image order and augmentation", min=0),
        "batch_size": Spec(int, 16, "images per iteration", min=1),
        "lr": Spec(float, 0.001, "SGD learning rate after warm-up (cosine to 0)", min=0.0),
        "momentum": Spec(float, 0.9, "SGD momentum", min=0.0, max=1.0),
        "weight_decay": Spec(float, 0.0005, "SGD weight decay", min=0.0),
        "warmup_iterations": Spec(int, 500, "iterations at the constant warm-up learning rate", min=0),
        "warmup_lr": Spec(float, 1.0e-5, "warm-up learning rate", min=0.0),
        "augment": {
            "color_jitter": Spec(bool, True, "random brightness, contrast, saturation and hue"),
            "long_side": Spec(list, [288, 480], "random long side range before cropping", item=int, length=2, min=1),
            "min_short_side": Spec(int, 224, "the rescaled short side is at least this (>= crop)", min=1),
            "crop": Spec(int, 224, "square training crop, a multiple of the patch size", min=1),
            "flip": Spec(bool, True, "random horizontal flip"),
        },
    },
    "runs": MapOf(
        {
            "reads": Spec(
                str,
                None,
                "classification: artifacts/index; segmentation: the seeds the CAM loss is trained against, "
                "artifacts/seeds_<a seed variant>.zarr",
            )
        },
        "prompt learning runs; each becomes artifacts/prompts_<name> (task classification or segmentation)",
        kind_key="task",
        kinds={
            "classification": _learn_task("unified_context", 0.015, ("mcl", "bce"), 1800),
            "segmentation": {
                **_learn_task("csc_prepend", 0.0125, ("cal", "ce"), 17000),
                "labels": Spec(
                    str,
                    "seeds",
                    "classes explained per crop: those left in the cropped seeds, or the image-level labels",
                    choices=("seeds", "image"),
                ),
            },
        },
    ),
}


ADAPT: Schema = {
    "device": Spec(str, "auto", "auto (CUDA when present), cpu, cuda, cuda:N"),
    "checkpoint_every": Spec(int, 500, "iterations between resumable checkpoints", min=1),
    "runs": MapOf(
        ADAPT_RUN,
        "adapter-learning runs (ExCEL's single-stage training on the frozen CLIP); each becomes "
        "artifacts/adapter_<name> (method: a key of wsss_core.adapter.ADAPT_METHODS)",
        kind_key="method",
        kinds={name: module.SETTINGS for name, module in ADAPT_METHODS.items()},
    ),
}


# DiCLIP's generation prompt (maintain_kv_cache/SD_generate_imgs/voc_generation.py), {} the class word, and the two
# words it prompts differently.
DICLIP_PROMPT = (
    "a realistic photograph of a fully visible, entire {} with natural colors, centered in the image, with a clear and "
    "distinct background, high color contrast, and the {} should not occupy the entire image frame, ensuring the {} is "
    "completely visible without any part being cropped."
)
DICLIP_PROMPT_OVERRIDES = {
    word: f"a realistic photograph of a fully visible, entire {subject}, centered in the image with natural colors, a "
    f"clear and distinct background, and high contrast between the {subject} and background. The {subject} should be "
    "fully visible, not cropped, and should not occupy the whole image frame."
    for word, subject in (("people", "person"), ("buses", "bus"))
}

SD_CACHE_RUN: Schema = {
    # Required, like every key dvc.yaml interpolates: DVC reads the file, not these defaults.
    "generator": Spec(
        str, None, "diffusers directory of the SD pipeline that draws the images (DiCLIP's code: SD 1.5)"
    ),
    "diffusion": Spec(
        str,
        None,
        "diffusers directory of the SD pipeline VCE reads, for the masks here and for the CAM runs that read this "
        "cache (DiCLIP: SD 2.1 base)",
    ),
    "images_per_class": Spec(int, 50, "images drawn per foreground class", min=1),
    "class_words": Spec(
        str, "dataset", "words naming the classes in the prompt: the dataset's or DiCLIP's", choices=CACHE_WORD_CHOICES
    ),
    "prompt": Spec(str, DICLIP_PROMPT, "generation prompt; every {} is replaced by the class word"),
    "prompt_overrides": Spec(dict, DICLIP_PROMPT_OVERRIDES, "class word -> the prompt it gets instead"),
    "steps": Spec(int, 45, "denoising steps", min=1),
    "guidance_scale": Spec(float, 10.0, "classifier-free guidance scale", min=0.0),
    "size": Spec(int, 384, "side of the generated image in pixels (a multiple of 8)", min=8),
    "stored_size": Spec(int, 512, "side it is resized to (PIL Lanczos) and stored at", min=8),
    "seed": Spec(int, 0, "image j of the run is drawn from seed + j (the reference's generation is unseeded)", min=0),
    "masks": {
        **DICLIP_TEXTS,
        **DICLIP_KERNEL,
        "box_threshold": Spec(float, 0.79, "CAA box mask threshold (times max)", min=0.0, max=1.0),
    },
    "clusters": Spec(int, 10, "keys per foreground class (KMeans; DiCLIP: 10 VOC, 5 COCO)", min=1),
    "background_clusters": Spec(int, 25, "background keys (KMeans over every image's background)", min=1),
    "random_state": Spec(int, 0, "KMeans seed", min=0),
    "n_init": Spec(int, 1, "KMeans restarts (scikit-learn >= 1.4's default for k-means++)", min=1),
}

SD_CACHE: Schema = {
    "device": Spec(str, "auto", "auto (CUDA when present), cpu, cuda, cuda:N"),
    "runs": MapOf(
        SD_CACHE_RUN,
        "TSA's synthetic key-value caches (DiCLIP): images drawn per class, their masks, keys and values; each "
        "becomes artifacts/sd_cache_<name>",
    ),
}

CAM_NETS_SECTION: Schema = {
    "device": Spec(str, "auto", "auto (CUDA when present), cpu, cuda, cuda:N; for training and CAMs"),
    "pinned_cpu": PINNED_CPU,
    "checkpoint_every": Spec(int, 1, "epochs between resumable checkpoints", min=1),
    "runs": MapOf(
        {},
        "CAM networks trained on the image-level labels, no CLIP (WeakTr); each becomes artifacts/camnet_<name> "
        "(method: a key of wsss_core.camnet.CAM_NETS)",
        kind_key="method",
        kinds={name: module.SETTINGS for name, module in CAM_NETS.items()},
    ),
    "cams": MapOf(
        {
            # Required, like every key dvc.yaml interpolates: DVC reads the file, not these defaults.
            "reads": Spec(str, None, "the trained network: artifacts/camnet_<a key of cam_nets.runs>"),
        },
        "CAM runs of trained CAM networks; each becomes artifacts/cams_<name>.zarr at image size (method: the "
        "network's)",
        kind_key="method",
        kinds={name: module.CAM_SETTINGS for name, module in CAM_NETS.items()},
    ),
}


# Where the per-image stages (sam_masks, cams, net_cams, predict) compute their images (wsss_core/engine). No stage
# depends on this section: the engine changes no byte of an artifact, so switching it reruns nothing.
ENGINE: Schema = {
    "kind": Spec(
        str, "local", "local: the stage's own process; ray: workers on a Ray cluster", choices=("local", "ray")
    ),
    "ray": {
        "address": Spec(
            str,
            "local",
            "local: start Ray on this machine for the stage; auto: the cluster `ray start` joined this machine to; "
            "HOST:PORT: that cluster's head",
        ),
        "local_cpus": Spec(int, None, "CPUs of the instance address local starts (null: all)", nullable=True, min=1),
        "cpus_per_worker": Spec(
            int, 1, "CPUs per worker where there are no GPUs (or the stage's device is cpu)", min=1
        ),
        "max_workers": Spec(
            int,
            None,
            "at most this many workers (null: one per GPU, or per cpus_per_worker CPUs)",
            nullable=True,
            min=1,
        ),
        "in_flight": Spec(int, 2, "images queued at each worker, so it never waits for the next", min=1),
        "max_restarts": Spec(
            int, 3, "restarts of a dead worker (and resends of its images) before the stage fails", min=0
        ),
    },
}


# The demo's own small CLIP (open_clip's classes): 8-px patches at 64 px, average-pooled patch tokens (the embedding
# CLIP-ES explains). Trained at 64 px and run on the demo's 128-px images through the interpolated positional embedding.
DEMO_CLIP_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 2, "head_width": 32, "pool_type": "avg"},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 1},
}

DEMO: Schema = {
    "data": {  # the demo pipeline's demo_data stage -> data/demo
        "n_train": Spec(int, 60, "generated training images", min=1),
        "n_val": Spec(int, 30, "generated validation images", min=1),
        "image_size": Spec(list, [128, 128], "height, width of generated images", item=int, length=2, min=32),
        "seed": Spec(int, 0, "generator seed", min=0),
        "min_objects": Spec(int, 1, "fewest objects per image", min=1),
        "max_objects": Spec(int, 3, "most objects per image", min=1),
    },
    "clip": {
        "seed": Spec(int, 0, "seed of the initial weights and of every batch", min=0),
        "device": Spec(str, "auto", "training device: auto (CUDA when present), cpu, cuda, cuda:N"),
        "pinned_cpu": PINNED_CPU,
        "scenes": Spec(int, 4000, "pretraining scenes rendered (a separate draw of the demo generator)", min=0),
        "closeups": Spec(int, 2000, "pretraining close-ups of single objects", min=0),
        "closeup_fraction": Spec(float, 0.5, "share of close-ups in each batch", min=0.0, max=1.0),
        "steps": Spec(int, 3000, "optimizer steps", min=1),
        "batch_size": Spec(int, 32, "image-caption pairs per step", min=2),
        "lr": Spec(float, 0.001, "AdamW peak learning rate (warm-up, then cosine to 0)", min=0.0),
        "warmup_steps": Spec(int, 50, "linear learning-rate warm-up", min=0),
        "weight_decay": Spec(float, 0.1, "AdamW weight decay (not on gains, biases, the logit scale)", min=0.0),
        "logit_scale_start": Spec(
            float, 14.285714, "first logit scale (CLIP's 1/0.07); it rises log-linearly to 100", min=1.0, max=100.0
        ),
        "checkpoint_every": Spec(int, 100, "steps between resumable checkpoints", min=1),
        "model_cfg": Spec(dict, DEMO_CLIP_CFG, "open_clip config (embed_dim, vision_cfg, text_cfg) of the demo CLIP"),
    },
    "report": {
        "images": Spec(int, 3, "images per split in reports/demo.png", min=1, max=16),
        "artifacts": Spec(
            list,
            None,
            "evaluated artifacts (metrics/<name>) in the report; null: all, in pipeline order",
            item=str,
            nullable=True,
        ),
    },
}

# In pipeline order (the order `wsss params preset` writes them).
SECTIONS: dict[str, Schema] = {
    "dataset": DATASET,
    "models": MODELS,
    "sam_masks": SAM_MASKS,
    "sd_cache": SD_CACHE,
    "describe": DESCRIBE,
    "learn": LEARN,
    "adapt": ADAPT,
    "cam_nets": CAM_NETS_SECTION,
    "cams": CAMS,
    "seeds": SEEDS,
    "retrain": RETRAIN,
    "evaluate": EVALUATE,
    "demo": DEMO,
    "engine": ENGINE,
}
