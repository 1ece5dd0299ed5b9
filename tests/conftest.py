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


def small_params() -> dict:
    """The shipped params.yaml with a small dataset and a tiny random CLIP."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["dataset"]["synthetic"].update({"n_train": 6, "n_val": 3, "image_size": [64, 64]})
    params["models"]["clip"].update({"arch": "tiny", "model_cfg": TINY_CLIP_CFG, "random_init": True})
    params["cams"].update({"caa_layers": 2, "device": "cpu"})
    return params


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A working directory holding params.yaml (small settings); stages write artifacts/ and metrics/ here."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(small_params(), sort_keys=False))
    monkeypatch.chdir(tmp_path)
    return tmp_path
