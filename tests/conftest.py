"""Shared fixtures: a tiny project directory with a small synthetic dataset and fast params."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# A tiny CLIP of open_clip's own classes: patch 16 on the 64x64 test images gives a 4x4 token grid.
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 64, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}

# The demo CLIP in tests: the demo's layout (8-px patches, average pooling), one block, 32x32 images.
TINY_DEMO_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16, "pool_type": "avg"},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


# The tests that start or look for a Ray instance share one pytest-xdist worker: one instance on the machine at a time.
ONE_RAY_AT_A_TIME = pytest.mark.xdist_group("ray")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Whole-pipeline runs first: on pytest-xdist's two workers they then overlap, not end the run one alone."""
    items.sort(key=lambda item: item.get_closest_marker("dvc_repro") is None)  # stable: the rest keep their order


def small_params() -> dict:
    """The shipped params.yaml with a small dataset and a tiny random CLIP."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["demo"]["data"].update({"n_train": 6, "n_val": 3, "image_size": [64, 64]})
    params["models"]["clip"].update(
        {"arch": "tiny", "pretrained": None, "checkpoint": None, "model_cfg": TINY_CLIP_CFG, "random_init": True}
    )
    # the demo CLIP: a few steps of a one-block CLIP on 32x32 images (a 4x4 token grid)
    params["demo"]["clip"].update(
        {
            "device": "cpu",
            "pinned_cpu": False,  # stages run inside the test process, where torch is already loaded
            "scenes": 12,
            "closeups": 6,
            "steps": 3,
            "batch_size": 6,
            "warmup_steps": 1,
            "checkpoint_every": 2,
            "model_cfg": TINY_DEMO_CLIP_CFG,
        }
    )
    params["describe"]["device"] = "cpu"
    for run in params["describe"]["runs"].values():  # shipped descriptions files, read where the repository has them
        run["reads"] = str(ROOT / run["reads"]) if run["source"] == "file" else run["reads"]
    # ExCEL's and VDA's adapter learning: a few iterations on 32x32 crops, the schedules' switches inside them
    params["adapt"].update({"device": "cpu", "checkpoint_every": 2})
    for run in params["adapt"]["runs"].values():
        run.update(
            {"iterations": 3, "batch_size": 2, "crop_size": 32, "warmup_iterations": 1, "embedding_dim": 32}
            | {"dynamic_from": 1, "seg_affinity_from": 2, "par_iterations": 2}
        )
        if run["method"] == "vda":  # its mixtures from iteration 1, its prototypes from 2
            run.update({"inn_from": 1, "intra_from": 2, "inn_hidden": 16, "intra_components": 2})
    params["cam_nets"].update({"device": "cpu", "pinned_cpu": False, "checkpoint_every": 1})
    params["cams"]["device"] = "cpu"
    for run in params["cams"]["runs"].values():
        run["caa_layers"] = 2
    # FMA-WSSS prompt learning: 32x32 crops (a 2x2 token grid), a few iterations
    learn = params["learn"]
    learn.update({"device": "cpu", "checkpoint_every": 2})
    learn["training"].update({"batch_size": 4, "warmup_iterations": 1})
    learn["training"]["augment"].update({"long_side": [48, 64], "min_short_side": 32, "crop": 32})
    for run in learn["runs"].values():
        run.update({"n_ctx": 4, "iterations": 4})
    # retraining: a few updates of a narrow WeCLIP head on 48x48 crops
    retrain = params["retrain"]
    retrain.update(device="cpu", pinned_cpu=False, checkpoint_every=2)
    for run in retrain["runs"].values():
        run["schedule"].update({"iterations": 4, "batch_size": 2, "crop_size": 48, "warmup_iterations": 2})
        if run["network"] == "weclip_head":
            run["weclip_head"].update({"embedding_dim": 32, "heads": 4})
    return params


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A working directory holding params.yaml (small settings); stages write artifacts/ and metrics/ here."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(small_params(), sort_keys=False))
    monkeypatch.chdir(tmp_path)
    return tmp_path
