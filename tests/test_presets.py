"""Every preset as a user runs it: `wsss params preset`, then `dvc repro` on their own VOC or COCO tree with
checkpoints in the published file formats. The stages DVC runs are exactly the method's, and the dataset tree is
byte-identical afterwards."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import ROOT, TINY_CLIP_CFG
from tests.test_dvc_pipeline import copy_pipeline, dvc, stages_run
from tests.test_models_sam import TINY
from tests.test_sd_cache import TINY_ADAPT, TINY_MASKS, tiny_cache_run
from tests.test_segment_networks import TINY_RESNET, TINY_VIT
from tests.tiny_sd import save_tiny_pipeline
from wsss_core.adapter import ADAPT_METHODS
from wsss_core.data import generate_synthetic
from wsss_core.hashing import sha256_file, sha256_path
from wsss_core.params import apply_preset, load_params
from wsss_core.params.pipeline import pipeline_problems, pipeline_stages

PRESETS = sorted(path.stem for path in (ROOT / "presets").glob("*.yaml"))
# The stage families each published method runs (dvc.yaml's stage names before "@"); a preset of another method
# is checked against its own params alone.
METHOD_FAMILIES = {
    "clip_es": {"prepare", "cams", "seeds", "evaluate", "retrain", "predict", "evaluate_predictions"},
    "fma_wsss": {
        "prepare",
        "sam_masks",
        "learn",
        "cams",
        "seeds",
        "sams_seeds",
        "evaluate",
        "evaluate_sams",
        "retrain",
        "predict",
        "evaluate_predictions",
    },
    # ExCEL retrains nothing: its adapter's head predicts
    "excel": {"prepare", "describe", "adapt", "cams", "seeds", "evaluate", "predict", "evaluate_predictions"},
    # DiCLIP retrains nothing either: its Stable Diffusion cache starts the adapter, whose head predicts
    "diclip": {
        "prepare",
        "sd_cache",
        "adapt",
        "cams",
        "seeds",
        "evaluate",
        "predict",
        "evaluate_predictions",
    },
    # VDA reads no descriptions: its adapter learns them from the images
    "vda": {"prepare", "adapt", "cams", "seeds", "evaluate", "predict", "evaluate_predictions"},
    # WeakTr loads no CLIP: its own CAM network, then the ViT segmenter
    "weaktr": {
        "prepare",
        "cam_net",
        "net_cams",
        "seeds",
        "evaluate",
        "retrain",
        "predict",
        "evaluate_predictions",
    },
}


def preset_params(name: str) -> dict:
    return apply_preset(ROOT / "presets" / f"{name}.yaml")


def dvc_stages_run_by_root_repro(project: Path) -> set[str]:
    """The root dvc.yaml's stages and their ancestors in `dvc dag` (across every dvc.yaml of the repository)."""
    dot = dvc(project, "dag", "--dot")
    edges = re.findall(r'"([^"]+)" -> "([^"]+)"', dot)
    nodes = set(re.findall(r'"([^"]+)"', dot))
    wanted = {node for node in nodes if not node.startswith("demo/")}
    frontier = set(wanted)
    while frontier:
        frontier = {source for source, target in edges if target in frontier} - wanted
        wanted |= frontier
    return wanted


@pytest.mark.parametrize("name", [*PRESETS, "params.yaml"])
def test_a_root_repro_runs_exactly_the_methods_stages(name, tmp_path):
    copy_pipeline(tmp_path)
    params = load_params(ROOT / "params.yaml") if name == "params.yaml" else preset_params(name)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    expected = {stage.name for stage in pipeline_stages(params)}
    demo = {"demo/dvc.yaml:demo_data", "demo/dvc.yaml:demo_clip"}
    if name == "params.yaml":  # the demo params reach the demo pipeline through dataset.root and the CLIP's path
        expected |= demo
    elif name.rsplit("_", 1)[0] in METHOD_FAMILIES:
        assert {stage.split("@")[0] for stage in expected} == METHOD_FAMILIES[name.rsplit("_", 1)[0]]
    assert dvc_stages_run_by_root_repro(tmp_path) == expected
    assert pipeline_problems(params, files=False) == []


# ---------------------------------------------------------------------------------------- a user's data, end to end

TINY_SAM = {**TINY, "encoder_global_attn_indexes": [1]}  # a list: params are YAML


def write_voc(root: Path, source: Path) -> None:
    """A VOC2012 tree (JPEGImages, palette SegmentationClass, ImageSets/Segmentation) from generated images."""
    for folder in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets"):
        shutil.copytree(source / folder, root / folder)


def write_coco(root: Path, source: Path) -> None:
    """A COCO 2014 tree in the WSSS layout: JPEGImages/{split}2014, class-index PNGs, {split}.txt lists."""
    for split in ("train", "val"):
        ids = (source / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        lines = []
        for number, image_id in enumerate(ids):
            coco_id = f"COCO_{split}2014_{number:012d}"
            (root / "JPEGImages" / f"{split}2014").mkdir(parents=True, exist_ok=True)
            (root / "SegmentationClass" / f"{split}2014").mkdir(parents=True, exist_ok=True)
            shutil.copy(
                source / "JPEGImages" / f"{image_id}.jpg", root / "JPEGImages" / f"{split}2014" / f"{coco_id}.jpg"
            )
            labels = np.asarray(Image.open(source / "SegmentationClass" / f"{image_id}.png"))
            Image.fromarray(labels.astype(np.uint8)).save(
                root / "SegmentationClass" / f"{split}2014" / f"{coco_id}.png"
            )
            lines.append(coco_id)
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")


def write_checkpoints(folder: Path) -> dict[str, str]:
    """Tiny models saved as the published files are: OpenAI's CLIP state dict (half precision, with its metadata
    entries), SAM's state dict .pth, torchvision's ResNet state dict, DeiT's {"model": state dict} with its
    classifier, Stable Diffusion pipelines in diffusers' layout. Returns file name -> sha256 (of the single files)."""
    from wsss_core.models.compat import ensure_torchvision

    ensure_torchvision()  # before open_clip, segment-anything and torchvision are imported (see models/compat.py)
    import timm
    from open_clip import CLIP
    from torchvision.models.resnet import Bottleneck, ResNet

    from wsss_core.models.sam import build_sam_from_config

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    clip = CLIP(**TINY_CLIP_CFG, quick_gelu=True)
    state = {key: value.half() for key, value in clip.state_dict().items()}
    state.update(input_resolution=torch.tensor(64), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    torch.save(state, folder / "ViT-B-16.pt")
    torch.save(build_sam_from_config(**TINY_SAM, seed=0, device="cpu").sam.state_dict(), folder / "sam_tiny.pth")
    torch.save(ResNet(Bottleneck, TINY_RESNET).state_dict(), folder / "resnet_tiny.pth")
    deit = timm.create_model("deit_small_patch16_224", pretrained=False, num_classes=1000, img_size=64, **TINY_VIT)
    torch.save({"model": deit.state_dict()}, folder / "deit_tiny.pth")
    save_tiny_pipeline(folder / "stable-diffusion-v1-5")
    save_tiny_pipeline(folder / "stable-diffusion-2-1-base", (4, 4))  # 4 heads where DiCLIP reads heads 1 and 2
    return {path.name: sha256_file(path) for path in folder.iterdir() if path.is_file()}


def tiny_run(params: dict, hashes: dict[str, str]) -> dict:
    """The preset with tiny models and schedules; every stage, path and method setting otherwise as the preset's."""
    clip = params["models"]["clip"]
    clip.update(model_cfg=TINY_CLIP_CFG, sha256=hashes["ViT-B-16.pt"])  # the file keeps its official name
    for section in ("sd_cache", "describe", "adapt", "cam_nets", "cams", "learn", "sam_masks", "retrain"):
        params[section]["device"] = "cpu"
    deit = {"checkpoint": "checkpoints/deit_tiny.pth", "sha256": hashes["deit_tiny.pth"]}
    for run in params["cam_nets"]["runs"].values():
        run["backbone"].update(deit, overrides={**TINY_VIT, "img_size": 64})
        run.update(epochs=2, warmup_epochs=1, batch_size=2, reduction=2)
        run["augment"]["input_size"] = 64
    for run in params["describe"]["runs"].values():
        run.update(n=TINY_DESCRIPTIONS, clusters=4, n_init=1)
    for run in params["cams"]["runs"].values():
        if "caa_layers" in run:
            run["caa_layers"] = 2  # the tiny CLIP has 3 blocks
        if run["method"] == "excel_adapter":
            run.update(input_size=64, par_iterations=2)
        if run["method"] == "diclip":
            run.update(TINY_MASKS)
        if run["method"] == "diclip_adapter":
            run["input_size"] = 64
    for run in params["sd_cache"]["runs"].values():
        run.update(tiny_cache_run(run), masks={**run["masks"], **TINY_MASKS})  # its checkpoints, the preset's words
    params["adapt"]["checkpoint_every"] = 2
    for run in params["adapt"]["runs"].values():
        if run["method"] == "diclip":
            run.update(TINY_ADAPT)
            continue
        run.update(svc_layers=2, caa_layers=2, iterations=2, batch_size=2, crop_size=32, warmup_iterations=1)
        run.update(dynamic_from=1, seg_affinity_from=2, par_iterations=2, embedding_dim=32, heads=4)
        if run["method"] == "vda":  # every phase: the mixtures from iteration 0, the descriptions from 1
            run.update(inn_from=0, intra_from=1, inn_hidden=16, intra_components=2)
    for run in params["sam_masks"]["runs"].values():
        run["sam"].update(
            model_type="custom",
            model_cfg=TINY_SAM,
            checkpoint="checkpoints/sam_tiny.pth",
            sha256=hashes["sam_tiny.pth"],
            points_per_side=4,
            crop_n_layers=0,
            pred_iou_thresh=0.0,
            stability_score_thresh=0.0,
            min_mask_region_area=4,
        )
    learn = params["learn"]
    learn.update(workers=0, checkpoint_every=2)
    learn["training"].update(batch_size=2, warmup_iterations=1)
    learn["training"]["augment"].update(long_side=[48, 64], min_short_side=32, crop=32)
    for run in learn["runs"].values():
        run.update(n_ctx=2, iterations=2, stop_after=None)
    retrain = params["retrain"]
    retrain["checkpoint_every"] = 2
    for run in retrain["runs"].values():
        run["schedule"].update(iterations=2, batch_size=2, crop_size=48, warmup_iterations=1)
        if run["network"] == "weclip_head":
            run["weclip_head"].update(embedding_dim=32, heads=4)
        if run["network"] == "weaktr":
            run["weaktr"].update(deit, encoder_cfg=TINY_VIT)
            run["gradient_clipping"]["patch"] = 16
        if run["network"] == "deeplabv3plus":
            run["deeplabv3plus"].update(
                blocks=TINY_RESNET,
                output_stride=16,
                checkpoint="checkpoints/resnet_tiny.pth",
                sha256=hashes["resnet_tiny.pth"],
            )
    variants = retrain["predict"]["variants"]
    if not retrain["runs"]:  # predictions of an adapter (ExCEL): its CRF variant has every view setting of the others
        retrain["predict"]["variants"] = {name: v for name, v in variants.items() if v["postprocess"] == "crf"}
    for variant in retrain["predict"]["variants"].values():
        if variant["resize"] == "square":
            variant["input_size"] = 64
        if variant["window"]:
            variant.update(window=32, stride=16)
    return params


TINY_DESCRIPTIONS = 2  # sentences per class in the descriptions file a user supplies to describe's file source


def write_descriptions(project: Path, params: dict) -> None:
    """The descriptions files the preset's describe runs read, as a user writes them: every class of the dataset."""
    from wsss_core.data import COCO_CLASSES, VOC_CLASSES

    class_names = {"voc": VOC_CLASSES, "coco": COCO_CLASSES}[params["dataset"]["kind"]]
    for run in params["describe"]["runs"].values():
        if run["source"] != "file":
            continue
        sentences = {
            name: [f"it is a {name} of kind {number}." for number in range(TINY_DESCRIPTIONS)]
            for name in class_names[1:]  # background has no description
        }
        (project / run["reads"]).parent.mkdir(parents=True, exist_ok=True)
        (project / run["reads"]).write_text(yaml.safe_dump(sentences, sort_keys=False))


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    return generate_synthetic(
        tmp_path_factory.mktemp("source") / "syn", n_train=4, n_val=2, image_size=(64, 64), seed=3
    )


@pytest.mark.dvc_repro
@pytest.mark.parametrize("name", PRESETS)
def test_preset_runs_end_to_end_on_the_users_data_and_leaves_it_untouched(name, generated, tmp_path):
    copy_pipeline(tmp_path)
    params = preset_params(name)
    dataset = tmp_path / params["dataset"]["root"]
    (write_voc if params["dataset"]["kind"] == "voc" else write_coco)(dataset, generated)
    (dataset / "SENTINEL.txt").write_text("the user's own file")
    before = sha256_path(dataset)
    hashes = write_checkpoints(tmp_path / "checkpoints")
    params = tiny_run(params, hashes)
    write_descriptions(tmp_path, params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert pipeline_problems(params, files=True, root=tmp_path) == []

    run = stages_run(dvc(tmp_path, "repro"))
    stages = pipeline_stages(params)
    assert sorted(run) == sorted(stage.name for stage in stages)
    made_by = {path: stage.name for stage in stages for path in stage.writes}
    for stage in stages:  # in data-flow order (ExCEL: describe -> adapt -> cams -> seeds, adapt -> predict)
        assert all(run.index(made_by[path]) < run.index(stage.name) for path in stage.reads.values() if path in made_by)
    assert sha256_path(dataset) == before  # not one byte of the user's tree changed, nothing added to it
    assert not (tmp_path / "data" / "demo").exists() and not (tmp_path / "artifacts" / "demo_clip").exists()
    metrics = sorted(path.parent.name for path in (tmp_path / "metrics").glob("*/metrics.json"))
    seeds = [*params["seeds"]["variants"], *params["seeds"]["sams"]["variants"]]
    predictions = params["retrain"]["predict"]["variants"]
    assert metrics == sorted([f"seeds_{v}" for v in seeds] + [f"predictions_{v}" for v in predictions])
    for name, run in params["adapt"]["runs"].items():  # an adapter records what it read, and only that
        upstream = yaml.safe_load((tmp_path / f"artifacts/adapter_{name}/provenance.json").read_text())["upstream"]
        assert set(upstream) == {"index"} | ({ADAPT_METHODS[run["method"]].READS} - {None})
    assert stages_run(dvc(tmp_path, "repro")) == []
