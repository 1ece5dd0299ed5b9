"""ExCEL's adapter learning (wsss_core/adapter/): LVC, the diversity loss and CAA's dynamic form on hand-checkable
cases; the CLIP pass against the training-free SVC; pseudo labels against the training-free method's PAR labels;
the schedule's switches; exact resume, frozen CLIP; the adapt stage end to end with the excel_adapter CAMs and
predictions read from its artifact."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import TINY_CLIP_CFG
from tests.test_excel_cam import random_bank, write_bank
from tests.test_stages import Killed, run_ok
from wsss_core.adapter import training
from wsss_core.adapter.diversity import affinity_prediction, affinity_targets, diversity_loss, radius_mask
from wsss_core.adapter.excel import build_model
from wsss_core.adapter.lvc import centred_similarity, lvc_shift
from wsss_core.adapter.pseudo_labels import PseudoLabelSettings, Schedule, caa_transition, pseudo_labels
from wsss_core.adapter.training import AdaptSettings, excel_seg_loss, make_batch, train
from wsss_core.adapter.visual import calibrated_features, calibrated_tokens, clip_pass, reference_head_tokens
from wsss_core.cam.caa import patch_affinity
from wsss_core.cam.excel.attributes import aggregate_attributes
from wsss_core.cam.excel.cams import ExcelCams, ExcelSettings
from wsss_core.cam.excel.svc import svc_forward
from wsss_core.models.clip import load_clip
from wsss_core.models.clip_text import encode_text
from wsss_core.models.clip_visual import VisualRunner
from wsss_core.prompts import prompts_for

NAMES = ["disc", "square", "triangle"]
BACKGROUND = ["sky", "ground"]
# The tiny CLIP has 3 blocks and 4 heads: 2 calibrated blocks, CAA on 2 layers, a narrow head.
RUN = {
    "seed": 0,
    "svc_layers": 2,
    "caa_layers": 2,
    "embedding_dim": 32,
    "transformer_layers": 1,
    "heads": 4,
    "dropout": 0.1,
    "head_tokens": "reference",
}


@pytest.fixture(scope="module")
def clip():
    return load_clip("tiny", model_cfg=TINY_CLIP_CFG, random_init=True, device="cpu", seed=2)


@pytest.fixture(scope="module")
def texts(clip):
    features, _ = random_bank(len(NAMES))
    text = encode_text(clip, prompts_for(NAMES + BACKGROUND))
    return aggregate_attributes(text, torch.from_numpy(features), len(NAMES))


class Images:
    """Random training images (uint8, 48 x 56) with their present classes."""

    def __init__(self, count: int = 3) -> None:
        rng = np.random.default_rng(0)
        self.items = [
            (rng.integers(0, 256, (48, 56, 3), dtype=np.uint8), sorted(rng.choice([1, 2, 3], 1 + i % 2, replace=False)))
            for i in range(count)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def settings(**changes) -> AdaptSettings:
    base = dict(
        iterations=4,
        batch_size=2,
        crop_size=32,
        warmup_iterations=1,
        checkpoint_every=2,
        dynamic_from=2,
        seg_affinity_from=3,
        par_iterations=3,
    )
    base.update(changes)
    labels = PseudoLabelSettings(par_iterations=base.pop("par_iterations"))
    schedule = Schedule(base.pop("dynamic_from"), base.pop("seg_affinity_from"))
    return AdaptSettings(**base, schedule=schedule, labels=labels)


# ----------------------------------------------------------------------------------------------------------- LVC


def test_lvc_shift_by_hand():
    # three tokens: two alike, one orthogonal. cos = [[1,1,0],[1,1,0],[0,0,1]], mean 5/9
    features = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 2.0]]).reshape(1, 2, 1, 3)
    torch.testing.assert_close(
        centred_similarity(features), 3 * (torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]]) - 5 / 9)[None]
    )
    # r >= 0 only where cos = 1; the rest is -inf, so each row spreads over its own group
    expected = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(lvc_shift(features), expected[None])


def test_lvc_mean_is_taken_over_the_whole_batch():
    # two tokens with cos 0.6: alone, the mean is (2 + 1.2) / 4 = 0.8 > 0.6, so each token attends to itself only
    a = torch.tensor([[1.0, 0.6], [0.0, 0.8]]).reshape(1, 2, 1, 2)
    torch.testing.assert_close(lvc_shift(a)[0], torch.eye(2))
    # batched with an image of opposite tokens (cos -1) the mean drops to (3.2 + 0) / 8 = 0.4 < 0.6: now they share
    anti = torch.tensor([[1.0, -1.0], [0.0, 0.0]]).reshape(1, 2, 1, 2)
    together = lvc_shift(torch.cat([a, anti]))[0]
    off, own = 3 * (0.6 - 0.4), 3 * (1 - 0.4)
    torch.testing.assert_close(together[0, 1], torch.tensor(np.exp(off) / (np.exp(off) + np.exp(own))).float())


def test_calibrated_path_is_svc_and_lvc_adds_heads_times_the_shift(clip):
    runner = VisualRunner(clip)
    images = torch.randn(2, 3, 64, 48)
    once = clip_pass(runner, images, svc_layers=1, attention_layers=2)
    reference = svc_forward(runner, images, layers=1)  # the training-free SVC
    torch.testing.assert_close(calibrated_features(runner, once), reference.features, atol=1e-5, rtol=1e-5)
    # original-path attention at the reference's scales: head mean for a plain block, head sum for a calibrated one
    torch.testing.assert_close(
        once.attentions.sum(-1), torch.tensor([1.0, runner.num_heads]).view(2, 1, 1).expand(2, 2, 13)
    )
    shift = torch.softmax(torch.randn(2, 12, 12), dim=-1)
    moved = calibrated_tokens(runner, once, shift) - calibrated_tokens(runner, once)
    value = once.values[0]  # (B, H, N, d) of the one calibrated block
    per_head = torch.zeros_like(value)
    per_head[:, :, 1:] = runner.num_heads * shift.unsqueeze(1) @ value[:, :, 1:]
    out_proj = runner.blocks[-1].attn.out_proj
    expected = per_head.transpose(1, 2).reshape(2, 13, -1) @ out_proj.weight.T  # the bias cancels
    torch.testing.assert_close(moved, expected, atol=1e-5, rtol=1e-4)


def test_the_head_reads_the_references_in_place_updated_tokens(clip, texts):
    runner = VisualRunner(clip)
    images = torch.randn(1, 3, 64, 64)
    once = clip_pass(runner, images, svc_layers=2, attention_layers=0)  # blocks 1 and 2 calibrated
    calibrated = calibrated_tokens(runner, once)
    tokens = reference_head_tokens(once, calibrated)
    # block 0 (before the calibrated ones): the calibrated path's final tokens with the final CLS token
    torch.testing.assert_close(tokens[0], torch.cat([once.tokens[-1][:, :1], calibrated[:, 1:]], dim=1))
    # block 1: its output plus block 2's attention residual, i.e. block 2's state before its FFN
    block = runner.blocks[2]
    residual = block.attn(block.ln_1(once.tokens[1]), block.ln_1(once.tokens[1]), block.ln_1(once.tokens[1]))[0]
    torch.testing.assert_close(tokens[1], once.tokens[1] + residual, atol=1e-5, rtol=1e-5)
    assert tokens[2] is once.tokens[2]
    model = build_model(clip, texts, len(NAMES), {**RUN, "head_tokens": "original"}).eval()
    with torch.no_grad():
        plain = model.segment(images)
        model.head_tokens = "reference"
        quirk = model.segment(images)
        torch.testing.assert_close(quirk, model(images).logits)
    assert not torch.allclose(plain, quirk)


# ----------------------------------------------------------------------------------------------------- diversity


def test_radius_mask_is_a_square_window():
    mask = radius_mask(3, 3, 1)
    assert mask[0].reshape(3, 3).tolist() == [[True, True, False], [True, True, False], [False, False, False]]
    assert mask[4].all() and torch.equal(mask, mask.T)
    assert radius_mask(3, 3, 0).equal(torch.eye(9, dtype=torch.bool))


def test_affinity_targets_and_loss_by_hand():
    labels = torch.tensor([[1, 9, 2, 9], [9, 9, 9, 9], [1, 9, 255, 9], [9, 9, 9, 9]])[None]  # patch 2: top-left
    targets = affinity_targets(labels, (2, 2), radius=1)
    expected = torch.tensor([[1, 0, 1, 255], [0, 1, 0, 255], [1, 0, 1, 255], [255, 255, 255, 255]])
    assert torch.equal(targets[0], expected)  # the diagonal counts; the ignored patch drops its row and column
    far = affinity_targets(labels, (2, 2), radius=0)[0]
    assert torch.equal(far[0], torch.tensor([1, 255, 255, 255]))
    prediction = torch.tensor([[0.9, 0.2, 0.6, 0.5], [0.2, 0.8, 0.1, 0.5], [0.6, 0.3, 0.7, 0.5], [0.5] * 4])[None]
    positives = (0.1 + 0.4 + 0.2 + 0.4 + 0.3) / (5 + 1)
    negatives = (0.2 + 0.2 + 0.1 + 0.3) / (4 + 1)
    torch.testing.assert_close(diversity_loss(prediction, targets), torch.tensor(0.5 * positives + 0.5 * negatives))
    # prediction: sigmoid(3 (cos - batch mean)), with gradient
    features = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).reshape(1, 2, 1, 2).requires_grad_(True)
    prediction = affinity_prediction(features)
    torch.testing.assert_close(prediction, torch.full((1, 2, 2), 0.5))
    assert prediction.requires_grad


def test_seg_loss_is_the_references():
    logits = torch.randn(1, 3, 2, 2)
    labels = torch.tensor([[[0, 1], [2, 0]]])
    per_pixel = torch.nn.functional.cross_entropy(logits, labels, reduction="none")[0]
    expected = 0.5 * ((per_pixel[0, 0] + per_pixel[1, 1]) / (2 + 1e-6) + (per_pixel[0, 1] + per_pixel[1, 0]) / 2)
    torch.testing.assert_close(excel_seg_loss(logits, labels), expected)
    only_foreground = torch.tensor([[[1, 1], [2, 2]]])  # no background: half the foreground term, not NaN
    torch.testing.assert_close(
        excel_seg_loss(logits, only_foreground),
        0.5 * torch.nn.functional.cross_entropy(logits, only_foreground),
        rtol=1e-5,
        atol=1e-6,
    )


# ------------------------------------------------------------------------------------------------- pseudo labels


def test_dynamic_caa_keeps_layers_with_patch_mass_and_weights_by_the_affinity():
    base = torch.full((3, 3), 0.2)
    attentions = torch.stack([base.clone(), base * 4, base * 4])  # layer 0 holds less patch-to-patch mass
    attentions = torch.nn.functional.pad(attentions, (1, 0, 1, 0), value=0.1)  # CLS row and column, dropped
    affinity = torch.rand(3, 3) * 0.5 + 0.25
    # differences sum(P - A_l): layer 0 the largest, above the mean, so only layers 1 and 2 are kept
    expected = patch_affinity((base * 4 * 2 / (2 + 1e-5)) * affinity, rounds=3, power=2)
    torch.testing.assert_close(caa_transition(attentions, affinity), expected)
    torch.testing.assert_close(caa_transition(attentions), patch_affinity(base * 3, rounds=3, power=2))


def test_static_pseudo_labels_are_the_training_free_methods_par_labels(clip, texts):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    present = [1, 3]
    training_free = ExcelCams(
        clip,
        prompts_for(NAMES),
        prompts_for(BACKGROUND),
        random_bank(len(NAMES))[0],
        ExcelSettings(
            input_size=64, svc_layers=2, caa_layers=2, store_resolution="image", refine="par", par_iterations=5
        ),
    )
    shares = training_free(image, present).cams
    expected = torch.tensor([0, *present])[torch.cat([1 - shares.amax(0, keepdim=True), shares]).argmax(0)]

    model = build_model(clip, texts, len(NAMES), RUN).eval()
    crop = training.normalise(image, training.IMAGENET_MEAN, training.IMAGENET_STD)[None]
    out = model(crop)
    labels = pseudo_labels(crop, out.cams, out.attentions, [present], PseudoLabelSettings(par_iterations=5))
    assert labels.shape == (1, 64, 64) and labels.dtype == torch.long
    assert torch.equal(labels[0], expected)


def test_pseudo_labels_of_a_batch_have_no_ignore_region(clip, texts):
    model = build_model(clip, texts, len(NAMES), RUN)
    images, present = make_batch(Images(), 0, settings(batch_size=3, crop_size=48))
    out = model(images, lvc=True)
    labels = pseudo_labels(images, out.lvc_cams, out.attentions, present, seg_affinity=out.affinity.detach())
    assert labels.shape == (3, 48, 48)
    for item, classes in enumerate(present):
        assert set(labels[item].unique().tolist()) <= {0, *classes}
    empty = pseudo_labels(images[:1], out.cams[:1], out.attentions[:, :1], [[]])
    assert not empty.any()


# ----------------------------------------------------------------------------------------------------- training


def _state_bytes(model) -> dict[str, bytes]:
    return {name: value.numpy().tobytes() for name, value in model.state_dict().items()}


def test_the_schedule_switches_at_the_configured_iterations(clip, texts, tmp_path, monkeypatch):
    seen = []
    real_labels, real_targets = training.pseudo_labels, training.affinity_targets

    def spy_labels(*args, seg_affinity=None):
        labels = real_labels(*args, seg_affinity=seg_affinity)
        seen.append({"dynamic": seg_affinity is not None, "cams": args[1], "labels": labels})
        return labels

    def spy_targets(pairs, *args):
        seen[-1]["pairs_are_labels"] = pairs is seen[-1]["labels"]
        return real_targets(pairs, *args)

    monkeypatch.setattr(training, "pseudo_labels", spy_labels)
    monkeypatch.setattr(training, "affinity_targets", spy_targets)
    model = build_model(clip, texts, len(NAMES), RUN)
    train(model, Images(), settings(), device="cpu", work_dir=tmp_path)
    assert [step["dynamic"] for step in seen] == [False, False, True, True]
    assert [step["pairs_are_labels"] for step in seen] == [True, True, True, False]


def test_training_resumes_to_the_same_bytes_and_leaves_clip_frozen(clip, texts, tmp_path):
    clip_before = hashlib.sha256(b"".join(v.numpy().tobytes() for v in clip.model.state_dict().values())).hexdigest()
    whole = build_model(clip, texts, len(NAMES), RUN)
    curve = train(whole, Images(), settings(), device="cpu", work_dir=tmp_path / "whole")
    assert [row["iteration"] for row in curve] == [0, 1, 2, 3]
    assert all(np.isfinite([row["loss"], row["seg_loss"], row["diversity_loss"]]).all() for row in curve)
    assert curve[0]["lr"] == pytest.approx(1e-4 * 1e-6) and curve[1]["lr"] == pytest.approx(1e-4 * (1 - 1 / 4))

    def kill_at_three(done: int) -> None:
        if done == 3:
            raise Killed

    interrupted = build_model(clip, texts, len(NAMES), RUN)
    with pytest.raises(Killed):
        train(interrupted, Images(), settings(), device="cpu", work_dir=tmp_path / "resumed", on_step=kill_at_three)
    resumed = build_model(clip, texts, len(NAMES), RUN)  # a fresh process: initial weights, then the checkpoint
    resumed_curve = train(resumed, Images(), settings(), device="cpu", work_dir=tmp_path / "resumed")
    assert _state_bytes(resumed) == _state_bytes(whole)
    assert resumed_curve == curve
    assert _state_bytes(whole) != _state_bytes(build_model(clip, texts, len(NAMES), RUN))  # it did train

    after = hashlib.sha256(b"".join(v.numpy().tobytes() for v in clip.model.state_dict().values())).hexdigest()
    assert after == clip_before and not any(p.requires_grad for p in clip.model.parameters())
    assert all(name.startswith("head.") for name in whole.state_dict())
    clip_ids = {id(p) for p in clip.model.parameters()}
    assert not clip_ids & {id(p) for p in whole.parameters()}


# ------------------------------------------------------------------------------------------------------- stage


def test_adapt_stage_end_to_end_with_its_cams_and_predictions(project):
    from wsss_core.audit import audit
    from wsss_core.data.index import read_index
    from wsss_core.params import load_params
    from wsss_core.store import DenseMaps

    run_ok("demo_data")
    run_ok("prepare")
    class_names = read_index(Path("artifacts/index/train.parquet")).class_names
    write_bank(Path("artifacts/descriptions_bank"), *random_bank(len(class_names) - 1))
    Path("artifacts/descriptions_bank.dvc").write_text("# stands for `dvc import` of an attribute bank\n")
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["adapt"] = {
        "device": "cpu",
        "checkpoint_every": 2,
        "runs": {
            "excel": {
                "method": "excel",
                "reads": "artifacts/descriptions_bank",
                **RUN,
                "iterations": 3,
                "batch_size": 2,
                "crop_size": 32,
                "warmup_iterations": 1,
                "dynamic_from": 1,
                "seg_affinity_from": 2,
                "par_iterations": 2,
            }
        },
    }
    params["cams"]["runs"].pop("vda"), params["seeds"]["variants"].pop("vda")  # the demo's VDA adapter is not made here
    params["cams"]["runs"]["adapted"] = {
        "method": "excel_adapter",
        "reads": "artifacts/adapter_excel",
        "caa_layers": 2,
        "par_iterations": 2,
    }
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_ok("adapt", "excel")

    out = Path("artifacts/adapter_excel")
    assert sorted(p.name for p in out.iterdir()) == ["provenance.json", "texts.safetensors", "weights.safetensors"]
    provenance = yaml.safe_load((out / "provenance.json").read_text())
    assert provenance["stage"] == "adapt" and set(provenance["upstream"]) == {"index", "descriptions"}
    assert provenance["params"]["adapt.runs.excel"]["iterations"] == 3 and "clip" in provenance["checkpoints"]
    assert audit(out).ok
    loss = Path("metrics/adapt_excel/loss.csv").read_text().splitlines()
    assert loss[0] == "iteration,loss,seg_loss,diversity_loss" and len(loss) == 4
    assert Path("metrics/adapt_excel/lr.csv").read_text().splitlines()[0] == "iteration,lr"
    assert not list(Path(".wsss_scratch").glob("adapter_excel-*"))  # the resume directory is gone

    # killed after its checkpoint at iteration 2, then rerun: the same artifact, byte for byte
    from wsss_core.drivers.adapt import adapt
    from wsss_core.hashing import sha256_path

    uninterrupted = sha256_path(out)
    shutil.rmtree(out)

    def kill_at_two(done: int) -> None:
        if done == 2:
            raise Killed

    with pytest.raises(Killed):
        adapt(
            "excel",
            Path("artifacts/index/train.parquet"),
            Path("artifacts"),
            Path("metrics"),
            load_params(Path("params.yaml")),
            on_step=kill_at_two,
        )
    assert not out.exists() and list(Path(".wsss_scratch").glob("adapter_excel-*/last.pt"))
    run_ok("adapt", "excel")
    assert sha256_path(out) == uninterrupted

    run_ok("cams", "adapted")
    cams = DenseMaps(Path("artifacts/cams_adapted.zarr"), kind="cams")
    assert len(cams) == 6 and cams.provenance["details"]["variant"] == "lvc"
    assert "adapter" in cams.provenance["upstream"]
    for index in range(len(cams)):
        maps = cams[index]
        assert maps.shape == (len(cams.classes(index)), 4, 4) and maps.min() >= 0 and maps.max() <= 1

    # the predict stage runs the adapter's head as the segmenter, with ExCEL's inference (square views, logits
    # averaged, the unflipped view alone at scale 1.0, dense CRF)
    params = yaml.safe_load(Path("params.yaml").read_text())
    excel = {"segmenter": str(out), "reads": str(out), "scales": [0.5, 1.0], "flip": True, "unflipped_scales": [1.0]}
    excel.update(resize="square", input_size=64, merge="logits", postprocess="crf")
    params["retrain"]["predict"]["variants"] = {"adapted": excel}
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_ok("predict", "adapted")
    predictions = DenseMaps(Path("artifacts/predictions_adapted.zarr"), kind="labels")
    assert len(predictions) == 3 and predictions[0].shape == (64, 64)
    assert predictions.provenance["upstream"]["segmenter"]["path"] == "artifacts/adapter_excel"
    assert predictions.provenance["details"]["network"] == "weclip_head"


EXCEL_LAYERS = ("svc_layers", "caa_layers")


def test_params_name_what_an_adapt_run_must_read_and_fit(tmp_path):
    from wsss_core.adapter.settings import check_run
    from wsss_core.params import ParamsError, load_params
    from wsss_core.params.pipeline import pipeline_problems

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"adapt": {"runs": {"x": {"method": "excel", "reads": "artifacts/index"}}}}))
    params = load_params(path)
    run = params["adapt"]["runs"]["x"]
    assert run["iterations"] == 30000 and run["lr"] == 1e-4 and run["box_threshold"] == 0.79  # reference defaults
    problems = pipeline_problems(params, files=False)
    assert "adapt.runs.x.reads: 'artifacts/index' is not artifacts/descriptions_<run>" in problems
    with pytest.raises(ParamsError, match=r"adapt\.runs\.x\.crop_size: 40 is not a multiple of the patch size 16"):
        check_run({**run, "crop_size": 40}, "adapt.runs.x", patch_size=16, blocks=12, layer_keys=EXCEL_LAYERS)
    with pytest.raises(ParamsError, match=r"adapt\.runs\.x\.svc_layers: 5 exceeds the 3 blocks"):
        check_run(run, "adapt.runs.x", patch_size=16, blocks=3, layer_keys=EXCEL_LAYERS)
