"""DiCLIP end to end on tiny random models saved as published: the sd_cache stage (images, masks, keys, values; resume
and byte-identical reruns), then a diclip CAM run reading the cache, its seeds and metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from tests.conftest import ONE_RAY_AT_A_TIME
from tests.test_stages import Killed, invoke, run_ok
from tests.tiny_sd import save_tiny_pipeline
from wsss_core.hashing import sha256_path
from wsss_core.store import DenseMaps

IMAGES_PER_CLASS = 2
# On the tiny models' 64-px input: the UNet's two up blocks work on 16x16 (ACR's layer) and 32x32 latent tokens
TINY_MASKS = {
    "input_size": 64,
    "caa_layers": 2,
    "vce_block": "up_blocks.0.attentions.1",
    "refine_block": "up_blocks.1.attentions.1",
}


@pytest.fixture(scope="module")
def sd_dirs(tmp_path_factory) -> dict[str, Path]:
    """The generator (SD 1.5's role) and the pipeline VCE reads (SD 2.1 base's), both with 4 heads where DiCLIP reads
    heads 1 and 2."""
    root = tmp_path_factory.mktemp("sd")
    return {"generator": save_tiny_pipeline(root / "generator"), "diffusion": save_tiny_pipeline(root / "vce", (4, 4))}


def tiny_cache_run(sd_dirs: dict[str, Path], **run) -> dict:
    """An sd_cache run of the tiny pipelines: 2 images per class in 2 steps, 1 key per class, 2 background keys."""
    return {
        "generator": str(sd_dirs["generator"]),
        "diffusion": str(sd_dirs["diffusion"]),
        "images_per_class": IMAGES_PER_CLASS,
        "steps": 2,
        "size": 32,
        "stored_size": 40,
        "masks": TINY_MASKS,
        "clusters": 1,
        "background_clusters": 2,
        **run,
    }


def diclip_params(project: Path, sd_dirs: dict[str, Path], **run) -> dict:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["sd_cache"] = {"device": "cpu", "runs": {"tiny": tiny_cache_run(sd_dirs, **run)}}
    params["cams"]["runs"] = {
        "diclip": {"method": "diclip", "reads": "artifacts/sd_cache_tiny", "store_resolution": "image", **TINY_MASKS}
    }
    params["seeds"]["variants"] = {
        "diclip": {"cams": "cams_diclip", "background": "power", "background_value": 1.0, "crf": {"enabled": False}}
    }
    # DiCLIP's stages only: every other family emptied, as the preset has them
    for family in ("sam_masks", "describe", "learn", "adapt", "cam_nets", "retrain"):
        params[family]["runs"] = {}
    params["cam_nets"]["cams"] = params["seeds"]["sams"]["variants"] = params["retrain"]["predict"]["variants"] = {}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


@pytest.fixture
def cache_project(project, sd_dirs) -> Path:
    diclip_params(project, sd_dirs)
    run_ok("demo_data")
    run_ok("prepare")
    return project


def test_cache_holds_seeded_images_their_masks_and_clustered_keys(cache_project):
    run_ok("sd_cache", "tiny")
    cache = cache_project / "artifacts" / "sd_cache_tiny"
    images = pq.read_table(cache / "images.parquet").to_pydict()
    classes = len(json.loads((cache / "provenance.json").read_text())["details"]["class_names"]) - 1
    assert len(images["image_id"]) == classes * IMAGES_PER_CLASS
    assert images["seed"] == list(range(classes * IMAGES_PER_CLASS))  # image j drawn from seed + j
    assert images["class_id"] == [c for c in range(1, classes + 1) for _ in range(IMAGES_PER_CLASS)]
    assert all(word in prompt for word, prompt in zip(images["word"], images["prompt"], strict=True))
    for image_id, class_id in zip(images["image_id"], images["class_id"], strict=True):
        assert Image.open(cache / "images" / f"{image_id}.png").size == (40, 40)  # drawn at 32, stored at 40
        labels = np.asarray(Image.open(cache / "masks" / f"{image_id}.png"))
        assert labels.shape == (40, 40) and set(np.unique(labels)) <= {0, class_id}

    keys = pq.read_table(cache / "keys.parquet").to_pydict()
    assert keys["class_id"] == [0, 0] + list(range(1, classes + 1))  # background's 2 keys first, then 1 per class
    values = np.array(keys["value"])
    np.testing.assert_array_equal(values, np.eye(classes + 1)[keys["class_id"]])
    assert np.array(keys["key"]).shape == (classes + 2, 32)  # the tiny CLIP's embedding width
    provenance = json.loads((cache / "provenance.json").read_text())
    assert set(provenance["checkpoints"]) == {"generator", "vce", "clip"}
    assert provenance["checkpoints"]["vce"]["source"].endswith("vce")


def test_cache_resumes_after_a_kill_and_reruns_give_the_same_bytes(cache_project, monkeypatch):
    from wsss_core.drivers import sd_cache

    run_ok("sd_cache", "tiny")
    first = sha256_path(cache_project / "artifacts" / "sd_cache_tiny")
    shutil.rmtree(cache_project / "artifacts" / "sd_cache_tiny")

    masked = []
    original = sd_cache._Masker.__call__

    def dies_on_third_mask(self, item):
        if len(masked) == 2:
            raise Killed
        masked.append(item)
        return original(self, item)

    monkeypatch.setattr(sd_cache._Masker, "__call__", dies_on_third_mask)
    with pytest.raises(Killed):
        invoke("sd_cache", "tiny")
    assert not (cache_project / "artifacts" / "sd_cache_tiny").exists()  # no partial artifact

    drawn = []
    draw = sd_cache._Drawer.__call__
    monkeypatch.setattr(sd_cache._Drawer, "__call__", lambda self, item: drawn.append(item) or draw(self, item))
    monkeypatch.setattr(sd_cache._Masker, "__call__", lambda self, item: masked.append(item) or original(self, item))
    run_ok("sd_cache", "tiny")
    total = len(pq.read_table(cache_project / "artifacts" / "sd_cache_tiny" / "images.parquet"))
    assert drawn == []  # every image was drawn before the kill
    assert len(masked) == total  # two masks before the kill, the rest after it
    assert sha256_path(cache_project / "artifacts" / "sd_cache_tiny") == first


@ONE_RAY_AT_A_TIME
def test_the_cache_drawn_on_the_ray_engine_is_the_local_bytes(cache_project):
    import torch

    # Ray gives each CPU worker one thread; a float sum split over other threads rounds otherwise, which moves a
    # drawn pixel by one level now and then. With the threads alike, the engines write the same bytes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_ok("sd_cache", "tiny", "--out", "local_cache")
    finally:
        torch.set_num_threads(threads)
    run_ok("sd_cache", "tiny", "--engine", "ray", "--address", "local")  # both phases on Ray workers of their own
    assert sha256_path(cache_project / "artifacts" / "sd_cache_tiny") == sha256_path(cache_project / "local_cache")


def test_too_few_regions_for_the_keys_asked_is_an_error_naming_the_key(project, sd_dirs):
    diclip_params(project, sd_dirs, clusters=IMAGES_PER_CLASS + 1)
    run_ok("demo_data")
    run_ok("prepare")
    result = invoke("sd_cache", "tiny")
    assert result.exit_code == 1
    assert "sd_cache.runs.tiny.clusters: 3 keys asked for the class 1" in result.output
    assert not (project / "artifacts" / "sd_cache_tiny").exists()


def test_diclip_cams_retrieve_from_the_cache_and_make_seeds(cache_project, sd_dirs):
    run_ok("sd_cache", "tiny")
    run_ok("cams", "diclip")
    cams = DenseMaps(cache_project / "artifacts" / "cams_diclip.zarr", kind="cams")
    details = cams.provenance["details"]
    assert details["keys"] == len(pq.read_table(cache_project / "artifacts" / "sd_cache_tiny" / "keys.parquet"))
    with_retrieval = [maps for _, maps in cams]
    assert all(0 <= maps.min() and maps.max() <= 1 for maps in with_retrieval)

    params = diclip_params(cache_project, sd_dirs)
    params["cams"]["runs"]["diclip"]["retrieval_weight"] = 0.0
    (cache_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_ok("cams", "diclip", "--out", "artifacts/cams_plain.zarr")
    plain = [maps for _, maps in DenseMaps(cache_project / "artifacts" / "cams_plain.zarr", kind="cams")]
    # the cache's keys moved the CAMs
    assert any(not np.array_equal(a, b) for a, b in zip(with_retrieval, plain, strict=True))

    run_ok("seeds", "diclip")
    run_ok("evaluate", "seeds_diclip")
    assert (cache_project / "metrics" / "seeds_diclip" / "metrics.json").is_file()


def test_diclip_cams_refuse_a_diffusion_model_other_than_the_caches(sd_dirs, tmp_path):
    from wsss_core.cam.methods.diclip import load_cache_diffusion
    from wsss_core.models.diffusion import load_sd_pipeline
    from wsss_core.store.table import ArtifactError

    # the cache's record of its VCE pipeline, whose directory has since been given another UNet of the same shapes
    moved = shutil.copytree(sd_dirs["diffusion"], tmp_path / "vce")
    record = load_sd_pipeline(moved, device="cpu").provenance
    from safetensors.torch import load_file, save_file

    weights = moved / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({name: tensor + 1 for name, tensor in load_file(weights).items()}, weights)
    with pytest.raises(ArtifactError, match=r"not the ones the cache was made with .*unet/diffusion_pytorch_model"):
        load_cache_diffusion(record, "cpu", "artifacts/sd_cache_tiny")


# DiCLIP's training on the tiny models: 64-px crops (4x4 tokens), every switch of its schedule inside 3 iterations
TINY_ADAPT = {
    **TINY_MASKS,
    "fused_layers": 2,
    "iterations": 3,
    "batch_size": 2,
    "crop_size": 64,
    "warmup_iterations": 1,
    "embedding_dim": 32,
    "heads": 4,
    "adapter_size": 96,  # above the tiny COCO cache's 82 keys
    "caa_affinity_from": 1,
    "seg_affinity_from": 2,
}


def test_diclip_adapter_trains_on_the_cache_and_its_head_predicts(cache_project):
    from wsss_core.adapter.artifact import load_adapter
    from wsss_core.models.loading import clip_from_params

    run_ok("sd_cache", "tiny")
    params = yaml.safe_load((cache_project / "params.yaml").read_text())
    params["adapt"].update(device="cpu", checkpoint_every=2)
    params["adapt"]["runs"] = {"diclip": {"method": "diclip", "reads": "artifacts/sd_cache_tiny", **TINY_ADAPT}}
    variant = {"segmenter": "artifacts/adapter_diclip", "reads": "artifacts/adapter_diclip", "scales": [1.0, 0.5]}
    variant.update(flip=True, unflipped_scales=[1.0], resize="square", input_size=64, merge="logits")
    params["retrain"]["predict"]["variants"] = {"diclip": variant}
    (cache_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_ok("adapt", "diclip")

    curve = (cache_project / "metrics" / "adapt_diclip" / "loss.csv").read_text().splitlines()
    assert curve[0] == "iteration,loss,seg_loss,diversity_loss,dynamic_loss" and len(curve) == 4
    for row in curve[1:]:  # loss = seg + 0.1 diversity + 0.1 dynamic
        _, loss, seg, diversity, dynamic = (float(value) for value in row.split(","))
        assert loss == pytest.approx(seg + 0.1 * diversity + 0.1 * dynamic, rel=1e-5)
    artifact = cache_project / "artifacts" / "adapter_diclip"
    provenance = json.loads((artifact / "provenance.json").read_text())
    assert provenance["checkpoints"]["vce"]["source"].endswith("vce") and "sd_cache" in provenance["upstream"]

    # the adapter starts as the cache: its first rows of fc1 are the keys (training moved them a little)
    clip = clip_from_params(params["models"]["clip"], "cpu")
    model, _ = load_adapter(artifact, clip, "cpu")
    keys = np.array(pq.read_table(cache_project / "artifacts" / "sd_cache_tiny" / "keys.parquet")["key"].to_pylist())
    trained = model.adapter.fc1.weight.detach().numpy()
    assert np.abs(trained[: len(keys)] - keys).max() < 0.05 < np.abs(trained[len(keys) :]).mean()

    run_ok("predict", "diclip")
    run_ok("evaluate", "predictions_diclip")
    predictions = DenseMaps(cache_project / "artifacts" / "predictions_diclip.zarr", kind="labels")
    assert predictions[0].shape == (64, 64)
    assert predictions.provenance["upstream"]["segmenter"]["path"] == "artifacts/adapter_diclip"
