"""torchvision beside a CPU-only torch: the nms stand-in matches a brute-force reference, and the libraries import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from wsss_core.models.compat import ensure_torchvision, nms_cpu


def brute_force_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            x1, y1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            x2, y2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
            area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
            if inter / (area(boxes[i]) + area(boxes[j]) - inter) > threshold:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 50, size=(40, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(5, 30, size=(40, 2))], axis=1).astype(np.float32)
    scores = rng.random(40).astype(np.float32)
    kept = nms_cpu(torch.from_numpy(boxes), torch.from_numpy(scores), 0.4).tolist()
    assert kept == brute_force_nms(boxes, scores, 0.4)
    assert nms_cpu(torch.zeros((0, 4)), torch.zeros(0), 0.5).numel() == 0


def test_hand_made_overlap():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.9, 0.7])
    # box 1 (IoU 81/119 = 0.68 with box 0) wins over box 0; box 2 does not overlap
    assert nms_cpu(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms_cpu(boxes, scores, 0.7).tolist() == [1, 2, 0]


def test_model_libraries_import_and_torchvision_nms_agrees():
    ensure_torchvision()
    ensure_torchvision()  # idempotent
    import open_clip  # noqa: F401
    import segment_anything  # noqa: F401
    from torchvision.ops import batched_nms, nms

    rng = np.random.default_rng(7)
    corners = torch.from_numpy(rng.uniform(0, 40, size=(30, 2)).astype(np.float32))
    boxes = torch.cat([corners, corners + 12], dim=1)
    scores = torch.from_numpy(rng.random(30).astype(np.float32))
    assert nms(boxes, scores, 0.3).tolist() == nms_cpu(boxes, scores, 0.3).tolist()
    groups = torch.from_numpy(rng.integers(0, 3, size=30))
    kept = batched_nms(boxes, scores, groups, 0.3)
    for group in range(3):
        members = torch.nonzero(groups == group).flatten()
        expected = members[nms_cpu(boxes[members], scores[members], 0.3)]
        assert set(kept.tolist()) & set(members.tolist()) == set(expected.tolist())


def test_open_clip_imports_without_transformers_which_stays_importable():
    # a fresh interpreter: this one may have imported transformers already (diffusers' tests)
    script = (
        "import sys\n"
        "import wsss_core.models.clip\n"
        "import open_clip\n"
        "assert 'transformers' not in sys.modules, 'open_clip pulled transformers in'\n"
        "assert open_clip.hf_model.transformers is None\n"
        "import transformers\n"
        "from transformers import CLIPTextConfig\n"
        "print(CLIPTextConfig().hidden_size)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "512"
