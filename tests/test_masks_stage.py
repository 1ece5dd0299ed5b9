"""The sam_masks and SAMS seeds stages through their scripts: outputs, kill/resume, SAM weights, refusals."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import ONE_RAY_AT_A_TIME
from tests.test_models_sam import TINY
from tests.test_stages import Killed, invoke, run_ok
from wsss_core.audit import audit
from wsss_core.hashing import sha256_file, sha256_path
from wsss_core.masks.felzenszwalb import FelzenszwalbGenerator
from wsss_core.masks.records import MaskSet
from wsss_core.models.sam import build_sam_from_config
from wsss_core.store import DenseMaps

RUN = "felzenszwalb"  # the mask run of the shipped params
MASKS, REPORTS = Path(f"artifacts/masks_{RUN}"), Path(f"reports/masks_{RUN}")


def set_params(run: str = RUN, device: str | None = None, **settings) -> None:
    """Change the mask run `run` of sam_masks.runs (a new run starts as a copy of the shipped one); `device` is the
    family's (sam_masks.device)."""
    params = yaml.safe_load(Path("params.yaml").read_text())
    runs = params["sam_masks"]["runs"]
    entry = runs.setdefault(run, yaml.safe_load(yaml.safe_dump(runs[RUN])))
    for key, value in settings.items():
        if isinstance(value, dict):
            entry[key].update(value)
        else:
            entry[key] = value
    if device is not None:
        params["sam_masks"]["device"] = device
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def train_split_only() -> None:
    """Masks of the training split only: the prediction post-processed with them (it needs the eval split) goes."""
    set_params(eval_split=False)
    params = yaml.safe_load(Path("params.yaml").read_text())
    del params["retrain"]["predict"]["variants"]["sams"]
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def prepared(project) -> Path:
    """The small demo dataset, indexed, with masks in parts of 2 images (3 train parts)."""
    set_params(part_images=2, overlays=2)
    run_ok("demo_data")
    run_ok("prepare")
    return project


@pytest.fixture
def count_calls(monkeypatch):
    """Counts Felzenszwalb generations; `die_at` makes the n-th one kill the process."""
    original = FelzenszwalbGenerator.generate
    calls = {"n": 0, "die_at": None}

    def counted(self, image):
        calls["n"] += 1
        if calls["n"] == calls["die_at"]:
            raise Killed
        return original(self, image)

    monkeypatch.setattr(FelzenszwalbGenerator, "generate", counted)
    return calls


def test_felzenszwalb_masks_for_both_splits_with_provenance_and_pictures(prepared):
    run_ok("sam_masks", RUN)
    train, val = MaskSet(prepared / MASKS / "train"), MaskSet(prepared / MASKS / "val")
    assert (len(train), len(val)) == (6, 3)
    assert sorted(p.name for p in train.path.glob("part-*")) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert train.provenance["params"]["sam_masks"]["generator"] == "felzenszwalb"
    assert "device" not in train.provenance["params"]["sam_masks"]  # an engine's workers may run on different devices
    assert train.provenance["details"]["split"] == "train"
    image_id = train.image_ids[0]
    masks = train.read(image_id, kept_only=False)
    assert set(masks.level.tolist()) == {0, 1, 2} and masks.size == (64, 64)
    assert masks.kept[masks.level == 2].all() and not masks.kept.all()
    pictures = sorted(p.name for p in (prepared / REPORTS).iterdir())
    assert pictures == [f"train_{train.image_ids[0]}.png", f"train_{train.image_ids[1]}.png",
                        f"val_{val.image_ids[0]}.png", f"val_{val.image_ids[1]}.png"]  # fmt: skip
    node = audit(prepared / MASKS / "train", deep=True)
    assert node.ok and node.stage == "sam_masks" and node.children[0].stage == "prepare"

    before = sha256_path(prepared / MASKS)
    run_ok("sam_masks", RUN)  # recomputed from scratch: the same bytes
    assert sha256_path(prepared / MASKS) == before

    result = invoke("sam_masks", "sam")
    assert result.exit_code == 1 and "sam_masks.runs.sam: no such entry; defined: felzenszwalb" in result.output


def test_a_kill_and_a_rerun_give_the_bytes_of_an_uninterrupted_run(prepared, count_calls):
    train_split_only()
    run_ok("sam_masks", RUN, "--out", "reference")
    expected = sha256_path(prepared / "reference")
    count_calls.update(n=0, die_at=4)
    with pytest.raises(Killed):
        invoke("sam_masks", RUN)
    assert not (prepared / MASKS).exists()  # no half artifact
    count_calls.update(n=0, die_at=None)
    run_ok("sam_masks", RUN)
    assert count_calls["n"] == 3  # images 1-3 were kept; only 4-6 were computed again
    assert sha256_path(prepared / MASKS) == expected


def test_an_unknown_engine_is_refused_by_name(prepared):
    result = invoke("sam_masks", RUN, "--engine", "spark")
    assert result.exit_code == 1 and "--engine: 'spark' is not an engine; choose from local, ray" in result.output


@ONE_RAY_AT_A_TIME
def test_a_ray_cluster_that_is_not_there_is_named(prepared, monkeypatch):
    import ray._private.services

    # "auto" finds any Ray process on the machine, and another test's instance may still be shutting down: the
    # machine this test stands for has none.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray._private.services, "find_gcs_addresses", functools.cache(lambda: []))  # Ray clears it
    monkeypatch.setattr(ray._private.services, "find_bootstrap_address", lambda temp_dir: None)
    result = invoke("sam_masks", RUN, "--engine", "ray", "--address", "auto")
    assert result.exit_code == 1
    assert "engine.ray.address: no Ray cluster at 'auto'" in result.output and "ray start --head" in result.output
    assert not (prepared / MASKS).exists()


def test_sam_weights_from_a_file_with_their_hash_in_provenance(prepared):
    weights = prepared / "tiny_sam.pth"
    torch.save(build_sam_from_config(**TINY, seed=3, device="cpu").sam.state_dict(), weights)
    sam = {"model_type": "custom", "model_cfg": {**TINY, "encoder_global_attn_indexes": [1]},
           "checkpoint": "missing.pth", "points_per_side": 2, "pred_iou_thresh": 0.0,
           "stability_score_thresh": 0.0, "crop_n_layers": 0, "min_mask_region_area": 4}  # fmt: skip
    set_params("tiny_sam", generator="sam", eval_split=False, device="cpu", sam=sam)
    result = invoke("sam_masks", "tiny_sam")
    assert result.exit_code == 1 and "checkpoint not found: missing.pth" in result.output
    set_params("tiny_sam", sam={"checkpoint": None})
    result = invoke("sam_masks", "tiny_sam")
    assert result.exit_code == 1
    assert "sam_masks.runs.tiny_sam.sam.checkpoint: the SAM weights file is required" in result.output
    set_params("tiny_sam", sam={"checkpoint": str(weights), "sha256": sha256_file(weights)})
    run_ok("sam_masks", "tiny_sam")
    assert not (prepared / MASKS).exists()  # the other run is not touched
    train = MaskSet(prepared / "artifacts/masks_tiny_sam/train")
    assert train.provenance["checkpoints"]["sam"]["checkpoint"]["sha256"] == sha256_file(weights)
    assert train.n_masks.sum() > 0
    for image_id in train.image_ids:
        masks = train.read(image_id, kept_only=False)
        assert set(masks.level.tolist()) <= {0, 1, 2} and masks.masks.shape[1:] == (64, 64)


def test_sams_seeds_use_the_masks_and_refuse_masks_of_other_images(prepared):
    run_ok("cams", "caa")
    run_ok("sam_masks", RUN)
    run_ok("sams_seeds", "sams")
    seeds = DenseMaps(prepared / "artifacts/seeds_sams.zarr", kind="labels")
    cams = DenseMaps(prepared / "artifacts/cams_caa.zarr", kind="cams")
    for index in range(len(seeds)):
        assert set(np.unique(seeds[index]).tolist()) <= {0, *cams.classes(index).tolist()}
    node = audit(prepared / "artifacts/seeds_sams.zarr")
    assert node.ok and {child.name for child in node.children} == {"cams", "index", "masks"}
    run_ok("evaluate", "seeds_sams")

    # The same dataset ids with one image's content changed: the masks no longer belong to it.
    changed = prepared / "data/demo/JPEGImages/syn_000003.jpg"
    pixels = np.array(Image.open(changed))
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(changed, quality=95)
    run_ok("prepare")
    result = invoke("sams_seeds", "sams")
    assert result.exit_code == 1
    assert "cams_caa.zarr: computed from another version of image 'syn_000003'" in result.output
    run_ok("cams", "caa")  # the CAMs follow the new image; the masks still do not
    result = invoke("sams_seeds", "sams")
    assert result.exit_code == 1
    assert "masks of image 'syn_000003' were computed for different content" in result.output

    result = invoke("sams_seeds", "sams", "--masks", "nowhere")
    assert result.exit_code == 1 and "nowhere/train: no masks for split 'train'" in result.output
    result = invoke("sams_seeds", "crf")
    assert result.exit_code == 1
    assert "seeds.sams.variants.crf: no such entry; defined: sams, coarse, fine" in result.output
