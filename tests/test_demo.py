"""The demo CLIP (pretraining on the synthetic domain) and the demo report, with tiny settings of the same code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import TINY_DEMO_CLIP_CFG
from tests.test_stages import Killed, invoke, run_ok, run_to_seed_metrics
from wsss_core.data.synthetic import SYNTHETIC_CLASSES, render_closeup, render_scene
from wsss_core.demo import pretrain
from wsss_core.demo.pretrain import (
    CaptionTokens,
    CaptionVocabularyEmbedding,
    PretrainingSet,
    augment,
    caption,
    caption_vocabulary,
    draw_batch,
    learning_rate,
    logit_scale,
)
from wsss_core.demo.report import all_background_miou
from wsss_core.hashing import sha256_file
from wsss_core.models.checkpoints import CheckpointError

ARTIFACT = Path("artifacts/demo_clip")


def edit_params(change) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    change(params)
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


# ------------------------------------------------------------------------------------------------ pieces by hand


def test_caption_names_every_class_in_a_drawn_order():
    names = SYNTHETIC_CLASSES
    assert caption((5,), names, np.random.default_rng(0)) == "a photo of a ring."
    pair = {caption((1, 4), names, np.random.default_rng(seed)) for seed in range(20)}
    assert pair == {"a photo of a disc and a star.", "a photo of a star and a disc."}
    three = caption((2, 3, 6), names, np.random.default_rng(3))
    assert three.startswith("a photo of a ") and three.endswith(".") and three.count(", ") == 1
    assert sorted(three.removeprefix("a photo of ").rstrip(".").replace(" and ", ", ").split(", ")) == [
        "a cross",
        "a square",
        "a triangle",
    ]
    with pytest.raises(ValueError, match="at least one class"):
        caption((), names, np.random.default_rng(0))


def test_learning_rate_warms_up_then_decays_to_zero():
    # warm-up of 2 steps to 1.0, then a cosine over the remaining 8 steps
    assert learning_rate(0, 10, 1.0, 2) == pytest.approx(0.5)
    assert learning_rate(1, 10, 1.0, 2) == pytest.approx(1.0)
    assert learning_rate(2, 10, 1.0, 2) == pytest.approx(1.0)
    assert learning_rate(6, 10, 1.0, 2) == pytest.approx(0.5)  # half-way: (1 + cos(pi/2)) / 2
    assert learning_rate(10, 10, 1.0, 2) == pytest.approx(0.0)
    assert learning_rate(3, 10, 1.0, 0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))


def test_logit_scale_rises_log_linearly_to_its_end():
    assert logit_scale(0, 5, 10.0, 100.0) == pytest.approx(10.0)
    assert logit_scale(2, 5, 10.0, 100.0) == pytest.approx(math.sqrt(10.0 * 100.0))  # half-way in log space
    assert logit_scale(4, 5, 10.0, 100.0) == pytest.approx(100.0)
    assert logit_scale(0, 1, 10.0, 100.0) == pytest.approx(10.0)


def test_batches_hold_distinct_scene_label_sets_and_the_asked_share_of_closeups():
    labels = [(1,), (1,), (1, 2), (1, 2), (3,), (2, 5), (4,), (6,), (2,), (3,)]
    closeup = np.array([False] * 6 + [True] * 4)
    data = PretrainingSet(np.zeros((10, 8, 8, 3), np.uint8), labels, closeup)
    for step in range(5):
        batch = draw_batch(np.random.default_rng([0, step]), data, 6, 0.5)
        assert len(batch) == 6 and len(set(batch.tolist())) == 6
        assert closeup[batch].sum() == 3
        scene_sets = [labels[i] for i in batch if not closeup[i]]
        assert len(set(scene_sets)) == 3  # the four label sets of the scenes, none twice
    # more scene slots than label sets: every set once before any repeats
    batch = draw_batch(np.random.default_rng(1), data, 6, 0.0)
    scene_sets = [labels[i] for i in batch]
    assert set(scene_sets) == {(1,), (1, 2), (3,), (2, 5)} and len(scene_sets) == 6


def test_augment_applies_a_rotation_or_reflection_per_image():
    image = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    views = augment(image, np.random.default_rng(0))
    dihedral = []
    for k in range(4):
        rotated = torch.rot90(image[0], k, dims=(1, 2))
        dihedral += [rotated, rotated.flip(-1)]
    assert any(torch.equal(views[0], candidate) for candidate in dihedral)
    assert torch.equal(augment(image, np.random.default_rng(0)), views)  # same generator, same views


def test_caption_vocabulary_holds_every_caption_token_and_little_else():
    from wsss_core.models.compat import import_open_clip

    import_open_clip()
    import open_clip

    tokenizer = open_clip.SimpleTokenizer(context_length=77)
    vocabulary = caption_vocabulary(tokenizer, SYNTHETIC_CLASSES)
    rng = np.random.default_rng(3)
    captions = [
        caption(tuple(sorted(rng.choice(np.arange(1, 7), k, replace=False))), SYNTHETIC_CLASSES, rng)
        for k in (1, 2, 3, 6)
    ]
    assert torch.isin(tokenizer(captions), vocabulary).all()
    tokens = CaptionTokens(tokenizer)
    twice = captions + captions[::-1]
    assert torch.equal(tokens(twice), tokenizer(twice)) and len(tokens.rows) == len(captions)
    assert 0 in vocabulary and len(vocabulary) < 30  # padding, start, end, the frame's words and six class names


def test_training_only_the_caption_rows_gives_the_bits_of_training_the_whole_embedding():
    """AdamW (foreach, decoupled decay) on the full matrix vs on the caption rows plus the decay of the others."""
    torch.manual_seed(0)
    full = torch.nn.Embedding(500, 8)
    vocabulary = torch.tensor([0, 3, 17, 256, 499])
    rows = CaptionVocabularyEmbedding(full, vocabulary)
    start = full.weight.detach().clone()
    target = torch.randn(8)
    optimizers = [
        torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6) for m in (full, rows)
    ]
    for step in range(12):
        text = vocabulary[torch.randint(len(vocabulary), (4, 6), generator=torch.Generator().manual_seed(step))]
        lr = 1e-3 * (step + 1) / 12
        for model, optimizer in zip((full, rows), optimizers, strict=True):
            optimizer.param_groups[0]["lr"] = lr
            loss = torch.tanh(model(text) @ target).pow(2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        rows.decay(1 - lr * 0.1)
    merged = rows.merged().weight
    assert torch.equal(merged, full.weight)
    assert (merged[vocabulary] - start[vocabulary]).abs().min() > 1e-4  # the caption rows trained
    assert not torch.equal(merged[1], start[1]) and torch.allclose(merged[1], start[1], rtol=1e-3)  # others decayed
    with pytest.raises(ValueError, match=r"caption tokens \[5\] are outside the caption vocabulary"):
        rows(torch.tensor([[0, 5]]))


def test_the_loss_on_captions_cut_at_their_end_token_is_clips_own_on_full_captions():
    from wsss_core.models.clip import load_clip, open_clip

    clip = load_clip("demo-clip", model_cfg=TINY_DEMO_CLIP_CFG, random_init=True, seed=0, device="cpu")
    clip.model.train().requires_grad_(True)
    clip.model.token_embedding = CaptionVocabularyEmbedding(
        clip.model.token_embedding, caption_vocabulary(clip.tokenizer, SYNTHETIC_CLASSES)
    )
    rng = np.random.default_rng(0)
    label_sets = [(1,), (2, 5), (1, 3, 6), (4,)]
    texts = CaptionTokens(clip.tokenizer)([caption(labels, SYNTHETIC_CLASSES, rng) for labels in label_sets])
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert int(texts.argmax(dim=-1).max()) + 1 < texts.shape[1] // 2  # most of each caption is padding

    def loss_and_gradients(loss_of) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        clip.model.zero_grad(set_to_none=True)
        loss = loss_of()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in clip.model.named_parameters() if p.grad is not None}

    loss_function = open_clip.ClipLoss()
    cut, cut_gradients = loss_and_gradients(lambda: pretrain.contrastive_loss(clip, images, texts, loss_function))
    full, full_gradients = loss_and_gradients(lambda: loss_function(*clip.model(images, texts)))
    assert torch.allclose(cut, full, atol=1e-6)
    assert cut_gradients.keys() == full_gradients.keys() and len(cut_gradients) > 10
    for name, gradient in full_gradients.items():
        assert torch.allclose(cut_gradients[name], gradient, rtol=1e-4, atol=1e-5 * gradient.abs().max()), name
    assert full_gradients["positional_embedding"].abs().sum() > 0


def test_pretraining_images_are_their_own_draw_and_close_ups_fill_the_frame():
    scene, mask = render_scene([0, pretrain.SCENE_STREAM, 0], (64, 64), 2, 1, 3)
    again, _ = render_scene([0, pretrain.SCENE_STREAM, 0], (64, 64), 2, 1, 3)
    assert scene.shape == (64, 64, 3) and scene.dtype == np.uint8 and np.array_equal(scene, again)
    assert mask.shape == (64, 64) and 2 in mask and set(np.unique(mask)) <= {0, 1, 2, 3, 4, 5, 6, 255}
    dataset_draw, _ = render_scene([0, 0], (64, 64), 2, 1, 3)  # the dataset's first image uses seed [0, 0]
    assert not np.array_equal(scene, dataset_draw)
    closeup = render_closeup([0, pretrain.CLOSEUP_STREAM, 0], (64, 64), 2)
    assert closeup.shape == (64, 64, 3)
    with pytest.raises(ValueError, match="class_index must lie in 1..6, got 7"):
        render_closeup([0], (64, 64), 7)


# ----------------------------------------------------------------------------------------- the demo_clip stage


def clip_loss_on(model_file: Path, batch: tuple[torch.Tensor, list[str]], scale: float) -> float:
    """ClipLoss of the weights in `model_file` (random weights when None) on a fixed batch at a fixed scale."""
    import open_clip

    from wsss_core.models.clip import load_clip

    if model_file is None:
        clip = load_clip("demo-clip", model_cfg=TINY_DEMO_CLIP_CFG, random_init=True, device="cpu")
    else:
        clip = load_clip("demo-clip", model_cfg=TINY_DEMO_CLIP_CFG, checkpoint=model_file, device="cpu")
    images, captions = batch
    with torch.no_grad():
        image_features = clip.model.encode_image(images, normalize=True)
        text_features = clip.model.encode_text(clip.tokenizer(captions), normalize=True)
        return float(open_clip.ClipLoss()(image_features, text_features, torch.tensor(scale)))


def test_pretraining_lowers_the_contrastive_loss(project):
    edit_params(lambda p: p["demo"]["clip"].update({"steps": 12, "lr": 0.003, "logit_scale_start": 10.0}))
    data = pretrain.build_pretraining_set(12, 6, (32, 32), 0, 1, 3)
    from wsss_core.models.clip import open_clip  # imported there after the torchvision fix

    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    images = (torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    rng = np.random.default_rng(0)
    batch = (images, [caption(labels, SYNTHETIC_CLASSES, rng) for labels in data.labels])
    before = clip_loss_on(None, batch, 10.0)
    run_ok("demo_clip")
    after = clip_loss_on(ARTIFACT / "model.safetensors", batch, 10.0)
    assert after < before - 0.05
    curve = Path("metrics/demo_clip/loss.csv").read_text().splitlines()
    assert curve[0] == "step,loss,lr,logit_scale" and len(curve) == 13


def test_pretraining_is_deterministic_and_loads_like_any_clip_checkpoint(project):
    run_ok("demo_clip")
    first = {name: sha256_file(ARTIFACT / name) for name in pretrain.ARTIFACT_FILES}
    first_curve = Path("metrics/demo_clip/loss.csv").read_bytes()
    run_ok("demo_clip", "--out-dir", "again", "--curve", "again.csv")
    assert {name: sha256_file(Path("again") / name) for name in pretrain.ARTIFACT_FILES} == first
    assert Path("again.csv").read_bytes() == first_curve

    from wsss_core.models.clip import load_clip

    model_file = ARTIFACT / "model.safetensors"
    cfg = json.loads((ARTIFACT / "model_cfg.json").read_text())
    assert cfg == TINY_DEMO_CLIP_CFG
    clip = load_clip("demo-clip", model_cfg=cfg, checkpoint=model_file, sha256=first["model.safetensors"], device="cpu")
    assert clip.provenance["checkpoint"] == {"path": str(model_file), "sha256": first["model.safetensors"]}
    assert clip.patch_size == 8 and not clip.provenance["random_init"]
    with pytest.raises(CheckpointError, match="sha256 is"):
        load_clip("demo-clip", model_cfg=cfg, checkpoint=model_file, sha256="0" * 64, device="cpu")

    provenance = json.loads((ARTIFACT / "provenance.json").read_text())
    assert provenance["stage"] == "demo_clip" and provenance["params"]["demo.clip"]["steps"] == 3
    assert provenance["details"]["pretraining_images"] == {"scenes": 12, "closeups": 6}


def test_pretraining_resumes_after_a_kill_with_the_same_bytes(project, monkeypatch):
    edit_params(lambda p: p["demo"]["clip"].update({"steps": 5}))
    run_ok("demo_clip", "--out-dir", "reference", "--curve", "reference.csv")
    expected = sha256_file(Path("reference/model.safetensors"))

    original = pretrain.augment
    calls = {"n": 0}

    def dies_at_step_four(images, rng):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Killed
        return original(images, rng)

    monkeypatch.setattr(pretrain, "augment", dies_at_step_four)
    with pytest.raises(Killed):
        invoke("demo_clip")
    assert not ARTIFACT.exists()  # no half artifact
    calls["n"] = 10  # never dies again; counts the steps the resumed run computes
    run_ok("demo_clip")
    assert calls["n"] == 10 + 3  # checkpoint after step 2 (every 2): steps 3, 4, 5 remain
    assert sha256_file(ARTIFACT / "model.safetensors") == expected
    assert Path("metrics/demo_clip/loss.csv").read_bytes() == Path("reference.csv").read_bytes()
    assert not any(Path(".wsss_scratch").glob("demo_clip-*"))  # the training state is dropped once written


def test_the_cams_stage_loads_the_demo_clip_and_records_its_hash(project):
    run_ok("demo_data")
    run_ok("prepare")
    run_ok("demo_clip")
    model_file = ARTIFACT / "model.safetensors"

    def use_the_demo_clip(params):
        params["models"]["clip"].update(
            {"arch": "demo-clip", "checkpoint": str(model_file), "model_cfg": TINY_DEMO_CLIP_CFG, "random_init": False}
        )
        for run in params["cams"]["runs"].values():
            run["caa_layers"] = 1  # the tiny demo CLIP has one block

    edit_params(use_the_demo_clip)
    run_ok("cams", "raw")
    from wsss_core.store import DenseMaps

    cams = DenseMaps("artifacts/cams_raw.zarr", kind="cams")
    record = cams.provenance["checkpoints"]["clip"]
    assert record["checkpoint"] == {"path": str(model_file), "sha256": sha256_file(model_file)}
    assert cams[0].shape[-2:] == (8, 8)  # 64x64 images through 8-px patches (trained at 32x32)


def test_bad_demo_clip_settings_name_the_key(project):
    cfg = json.loads(json.dumps(TINY_DEMO_CLIP_CFG))
    cfg["vision_cfg"]["pool_type"] = "tok"
    edit_params(lambda p: p["demo"]["clip"].update({"model_cfg": cfg}))
    result = invoke("demo_clip")
    assert result.exit_code == 1
    assert "demo.clip.model_cfg.vision_cfg.pool_type: 'tok'" in result.output
    edit_params(lambda p: p["demo"]["clip"].update({"model_cfg": TINY_DEMO_CLIP_CFG, "batch_size": 40}))
    result = invoke("demo_clip")
    assert result.exit_code == 1 and "demo.clip.batch_size: 40 is more than the 12 scenes and 6" in result.output


# ---------------------------------------------------------------------------------------- the demo_report stage


def test_all_background_baseline_by_hand():
    # 60 background pixels of 100 labelled; 3 classes in the GT (the one with 0 pixels does not count):
    # background IoU 0.6, the others 0 -> mIoU 0.2
    rows = [{"class": name, "gt_pixels": str(n)} for name, n in [("bg", 60), ("a", 30), ("b", 10), ("c", 0)]]
    assert all_background_miou(rows) == pytest.approx(0.2)
    assert all_background_miou([]) is None


def test_report_lists_every_evaluated_artifact_and_draws_its_panels(project):
    run_to_seed_metrics()
    edit_params(lambda p: p["demo"]["report"].update({"images": 2}))
    run_ok("demo_report")

    text = Path("reports/demo.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `seeds_")]
    cam, crf = (json.loads(Path(f"metrics/seeds_{v}/metrics.json").read_text()) for v in ("cam", "crf"))
    assert rows[0] == (
        f"| `seeds_cam` | train | 6 | {100 * cam['miou']:.1f} | {100 * cam['mean_precision']:.1f} | "
        f"{100 * cam['mean_recall']:.1f} | {100 * cam['coverage']:.1f} |"
    )
    assert rows[1].startswith(f"| `seeds_crf` | train | 6 | {100 * crf['miou']:.1f} |")
    oracle = text.split("## Oracle figures")[1]
    assert "WITH the ground truth" in oracle and f"{100 * cam['oracle']['best_miou']:.1f}" in oracle
    assert "random weights (seed 0)" in text  # the tiny test CLIP is random, and the report says so

    per_class = Path("metrics/seeds_cam/per_class.csv").read_text().splitlines()
    pixels = [int(line.split(",")[-2]) for line in per_class[1:]]
    baseline = 100 * pixels[0] / sum(pixels) / sum(n > 0 for n in pixels)
    assert f"All-background baseline (mIoU of calling every pixel background): train {baseline:.1f}." in text
    class_table = text.split("## IoU per class (%)")[1]
    assert "| artifact | split | " + " | ".join(SYNTHETIC_CLASSES) + " |" in class_table
    cam_ious = [line.split(",")[1] for line in per_class[1:]]
    expected = ["-" if not iou else f"{100 * float(iou):.1f}" for iou in cam_ious]
    assert "| `seeds_cam` | train | " + " | ".join(expected) + " |" in class_table

    picture = Image.open("reports/demo.png")
    # columns: image, GT, cams_raw, cams_caa, seeds_cam, seeds_crf at 1.25 in x 100 dpi; two rows of 1.55 in
    assert picture.size == (6 * 125, 2 * 155)
    first_bytes = Path("reports/demo.png").read_bytes(), text
    run_ok("demo_report")
    assert (Path("reports/demo.png").read_bytes(), Path("reports/demo.md").read_text()) == first_bytes

    edit_params(lambda p: p["demo"]["report"].update({"artifacts": ["seeds_crf", "seeds_sams"]}))
    result = invoke("demo_report")
    assert result.exit_code == 1
    assert "demo.report.artifacts: 'seeds_sams' was not evaluated; found: seeds_cam, seeds_crf" in result.output

    Path("metrics/seeds_crf/per_class.csv").write_text("class,iou\nbackground,0.5\n")
    result = invoke("demo_report")
    assert result.exit_code == 1 and "metrics/seeds_crf/per_class.csv: no 'gt_pixels' column" in result.output


def test_report_without_evaluations_says_what_to_run(project):
    result = invoke("demo_report")
    assert result.exit_code == 1 and "no evaluated artifacts" in result.output
