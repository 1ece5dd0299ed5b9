"""FMA-WSSS prompt learning on a tiny random-weight CLIP of open_clip's classes: prompt designs, the stored artifact,
gradients, training, kill/resume, and the coarse-to-fine chain through the stages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open

from tests.conftest import TINY_CLIP_CFG, small_params
from tests.test_stages import Killed, invoke, run_ok
from wsss_core.audit import audit
from wsss_core.cam.gradcam import softmax_gradcam
from wsss_core.cam.learned import LearnedCamSettings, LearnedPromptCams, gradcams_of_present
from wsss_core.hashing import sha256_path
from wsss_core.models.clip import ClipModel, load_clip
from wsss_core.models.clip_text import encode_text
from wsss_core.models.clip_visual import VisualRunner
from wsss_core.prompts.fma import PROMPTS_FILE, FmaPrompts, load_prompts, prompts_bytes
from wsss_core.provenance import dumps, make_provenance
from wsss_core.store import DenseMaps
from wsss_core.store.table import ArtifactError

FOREGROUND = ["cat", "bird avian"]
BACKGROUND = ["sky", "grass", "water"]


@pytest.fixture(scope="module")
def clip() -> ClipModel:
    return load_clip("tiny", model_cfg=TINY_CLIP_CFG, random_init=True, device="cpu")


def word_embeddings(clip: ClipModel, phrase: str) -> torch.Tensor:
    ids = torch.tensor(clip.tokenizer.encode(phrase))
    with torch.no_grad():
        return clip.model.token_embedding(ids)


# --------------------------------------------------------------------------------------------------- prompt designs


WORDS_AFTER = ["X X cat.", "X X bird avian.", "X X sky.", "X X grass.", "X X water."]
WORDS_BEFORE = ["cat X X.", "bird avian X X.", "sky X X.", "grass X X.", "water X X."]
DESIGNS = [
    ("unified_context", WORDS_AFTER, {"words": (2, 64)}),  # one context shared by all prompts
    ("csc_append_bg_words", WORDS_AFTER, {"words": (5, 2, 64)}),
    ("csc_prepend_bg_words", WORDS_BEFORE, {"words": (5, 2, 64)}),
    ("csc_prepend", WORDS_BEFORE[:2] + ["X X."] * 3, {"words": (2, 2, 64), "background": (3, 2, 64)}),
]


@pytest.mark.parametrize(("design", "texts", "shapes"), DESIGNS)
def test_designs_build_the_papers_prompts(clip, design, texts, shapes):
    prompts = FmaPrompts(clip, design, FOREGROUND, BACKGROUND, n_ctx=2)
    assert [text for encoder in prompts.encoders.values() for text in encoder.prompts] == texts
    assert {name: tuple(context.shape) for name, context in prompts.contexts().items()} == shapes
    assert [name for name, _ in prompts.named_parameters()] == [f"encoders.{name}.context" for name in shapes]
    embeddings = prompts()
    assert embeddings.shape == (5, 32) and prompts.num_foreground == 2
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(5))


def test_class_front_contexts_spliced_with_words_equal_the_written_prompts(clip):
    prompts = FmaPrompts(clip, "csc_prepend", FOREGROUND, BACKGROUND, n_ctx=2)
    with torch.no_grad():
        words, background = prompts.contexts()["words"], prompts.contexts()["background"]
        for index, phrase in enumerate(["on grass", "in water"]):
            words[index].copy_(word_embeddings(clip, phrase))
        for index, phrase in enumerate(["blue sky", "green grass", "deep water"]):
            background[index].copy_(word_embeddings(clip, phrase))
        spliced = prompts()
    written = ["cat on grass.", "bird avian in water.", "blue sky.", "green grass.", "deep water."]
    torch.testing.assert_close(spliced, encode_text(clip, written), atol=1e-5, rtol=1e-5)


def test_unknown_design_and_empty_classes_are_refused(clip):
    with pytest.raises(ValueError, match="unknown prompt design 'csc'"):
        FmaPrompts(clip, "csc", FOREGROUND, BACKGROUND)
    with pytest.raises(ValueError, match="foreground_words is empty"):
        FmaPrompts(clip, "unified_context", [], BACKGROUND)
    no_background = FmaPrompts(clip, "csc_prepend", FOREGROUND, [], n_ctx=2)
    assert list(no_background.encoders) == ["words"] and no_background().shape == (2, 32)


# ------------------------------------------------------------------------------------------------------ artifact


def write_artifact(directory: Path, prompts: FmaPrompts, clip: ClipModel, dtype: str) -> Path:
    directory.mkdir(parents=True)
    (directory / PROMPTS_FILE).write_bytes(prompts_bytes(prompts, dtype))
    provenance = make_provenance("learn_test", {}, checkpoints={"clip": clip.provenance}, details=prompts.description())
    (directory / "provenance.json").write_text(dumps(provenance))
    return directory


def test_stored_prompts_load_back(clip, tmp_path):
    prompts = FmaPrompts(clip, "csc_prepend", FOREGROUND, BACKGROUND, n_ctx=4, seed=7)
    expected = prompts().detach()
    exact = load_prompts(clip, write_artifact(tmp_path / "fp32", prompts, clip, "float32"))
    torch.testing.assert_close(exact(), expected, atol=0, rtol=0)
    half = write_artifact(tmp_path / "fp16", prompts, clip, "float16")
    torch.testing.assert_close(load_prompts(clip, half)(), expected, atol=2e-3, rtol=0)
    numbers = (2 + 3) * 4 * 64  # five prompts of four 64-wide context vectors
    size = (half / PROMPTS_FILE).stat().st_size
    assert 2 * numbers < size < 2 * numbers + 512  # two bytes a number plus a small header
    assert (tmp_path / "fp32" / PROMPTS_FILE).stat().st_size > 4 * numbers


def test_stored_prompts_bytes_depend_only_on_the_prompts(clip, tmp_path):
    prompts = FmaPrompts(clip, "csc_prepend", FOREGROUND, BACKGROUND, n_ctx=2)
    # safetensors orders its metadata by a randomised hash map: 16 saves agree by chance once in 2**15
    saved = {prompts_bytes(prompts, "float16") for _ in range(16)}
    assert len(saved) == 1
    data = saved.pop()
    length = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + length]
    canonical = json.dumps(json.loads(header), sort_keys=True, separators=(",", ":")).encode()
    assert length % 8 == 0 and header.rstrip(b" ") == canonical  # sorted keys, padded as safetensors pads
    directory = tmp_path / "prompts"
    write_artifact(directory, prompts, clip, "float16")
    with safe_open(directory / PROMPTS_FILE, "pt") as stored:  # the header still reads as safetensors
        assert stored.metadata() == {"design": "csc_prepend", "n_ctx": "2"}
    torch.testing.assert_close(load_prompts(clip, directory)(), prompts().detach(), atol=2e-3, rtol=0)


def test_prompts_refuse_another_clip_and_incomplete_artifacts(clip, tmp_path):
    prompts = FmaPrompts(clip, "unified_context", FOREGROUND, BACKGROUND, n_ctx=2)
    directory = write_artifact(tmp_path / "prompts", prompts, clip, "float16")
    other = load_clip("tiny", model_cfg=TINY_CLIP_CFG, random_init=True, seed=1, device="cpu")
    with pytest.raises(ArtifactError, match="prompts were learned on CLIP .* but models.clip loads"):
        load_prompts(other, directory)
    (directory / PROMPTS_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"prompts: not a prompts artifact \(prompts.safetensors missing"):
        load_prompts(clip, directory)


# ------------------------------------------------------------------------------------ Grad-CAM of present classes


def test_gradcams_of_present_equal_one_call_per_image():
    generator = torch.Generator().manual_seed(0)
    activations = torch.randn(3, 5, 4, generator=generator).requires_grad_()  # 2x2 grid + CLS
    weights = torch.randn(5, 4, generator=generator)  # 3 foreground + 2 background prompts
    logits = torch.tanh(activations[:, 1:]).mean(dim=1) @ weights.T
    present = torch.tensor([[True, False, True], [False, False, False], [False, True, False]])
    cams, items, class_ids = gradcams_of_present(activations, logits, present, (2, 2))
    assert items.tolist() == [0, 0, 2] and class_ids.tolist() == [1, 3, 2]
    for row, (item, targets) in enumerate([(0, [0, 2]), (0, [0, 2]), (2, [1])]):
        single = activations[item].detach().clone().requires_grad_()
        single_logits = torch.tanh(single[1:]).mean(dim=0) @ weights.T
        expected = softmax_gradcam(
            single, single_logits, targets, (2, 2), softmax_over=targets + [3, 4], epsilon=1e-5,
            relu=False, normalize=False,
        )  # fmt: skip
        torch.testing.assert_close(cams[row], expected[targets.index(int(class_ids[row]) - 1)])


def tiny_batch(num_foreground: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    seeds = torch.zeros((2, 32, 32), dtype=torch.long)
    seeds[0, 4:20, 4:20], seeds[1, 10:30, :16], seeds[1, 0:8, 20:] = 1, 2, 255
    present = torch.zeros((2, num_foreground), dtype=torch.bool)
    present[0, 0], present[1, 1] = True, True
    return {"images": torch.randn((2, 3, 32, 32), generator=generator), "present": present, "seeds": seeds}


@pytest.mark.parametrize(("design", "loss"), [("csc_prepend", "cal"), ("unified_context", "mcl")])
def test_gradients_reach_the_prompts_and_clip_stays_bit_identical(clip, design, loss):
    from wsss_core.drivers.learn import batch_loss

    prompts = FmaPrompts(clip, design, FOREGROUND, BACKGROUND, n_ctx=2)
    clip_before = {key: value.clone() for key, value in clip.model.state_dict().items()}
    contexts_before = {name: context.detach().clone() for name, context in prompts.contexts().items()}
    value = batch_loss(prompts, VisualRunner(clip), tiny_batch(2), loss, float(clip.model.logit_scale.exp()))
    value.backward()
    for name, context in prompts.contexts().items():  # the CAM loss reaches even the background prompts
        assert context.grad is not None and context.grad.abs().sum() > 0, name
    assert all(parameter.grad is None for parameter in clip.model.parameters())
    torch.optim.SGD(prompts.parameters(), lr=1.0).step()
    for key, tensor in clip.model.state_dict().items():
        assert torch.equal(tensor, clip_before[key]), key
    assert all(not torch.equal(context, contexts_before[name]) for name, context in prompts.contexts().items())


def test_learned_cams_of_one_image(clip):
    prompts = FmaPrompts(clip, "csc_prepend", FOREGROUND, BACKGROUND, n_ctx=2)
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)  # -> 48x64, a 3x4 grid
    results = {}
    for refine in ("none", "score", "cam"):
        settings = LearnedCamSettings(caa_layers=2, box_threshold=0.5, refine=refine)
        results[refine] = LearnedPromptCams(clip, prompts, settings)(image, [2, 1])
    for result in results.values():
        assert result.class_ids == [1, 2] and result.refined.shape == (2, 3, 4)
        # min-max's epsilon (1e-7, the reference's) is not negligible next to the tiny model's raw CAMs (~1e-5)
        assert result.refined.min() >= 0 and result.refined.amax(dim=(1, 2)).allclose(torch.ones(2), atol=0.05)
    torch.testing.assert_close(results["none"].refined, results["none"].raw)
    torch.testing.assert_close(results["score"].raw, results["cam"].raw)  # same Grad-CAM, refined differently
    assert not torch.allclose(results["score"].refined, results["none"].refined)
    by_features = LearnedCamSettings(caa_layers=2, box_threshold=0.5, refine="score", affinity_source="features")
    features = LearnedPromptCams(clip, prompts, by_features)(image, [2, 1])
    torch.testing.assert_close(features.raw, results["score"].raw)
    assert not torch.allclose(features.refined, results["score"].refined)
    with pytest.raises(ValueError, match="affinity_source must be one of"):
        LearnedCamSettings(affinity_source="keys")
    with pytest.raises(ValueError, match=r"class ids \[3\] are outside 1..2"):
        LearnedPromptCams(clip, prompts, LearnedCamSettings(caa_layers=2))(image, [3])


# ---------------------------------------------------------------------------------------------------------- stages


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Path:
    """A project that ran the FMA-WSSS chain once: classification prompts -> coarse CAMs -> coarse SAMS seeds ->
    segmentation prompts -> fine CAMs -> fine SAMS seeds, each evaluated."""
    root = tmp_path_factory.mktemp("fma_chain")
    (root / "params.yaml").write_text(yaml.safe_dump(small_params(), sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for name, *args in [
            ("demo_data",), ("prepare",), ("sam_masks", "felzenszwalb"),
            ("learn", "classification"), ("cams", "coarse"), ("sams_seeds", "coarse"),
            ("learn", "segmentation"), ("cams", "fine"), ("sams_seeds", "fine"),
            ("evaluate", "seeds_coarse"), ("evaluate", "seeds_fine"),
        ]:  # fmt: skip
            run_ok(name, *args)
    return root


def test_chain_writes_small_prompts_curves_and_an_auditable_trail(chain, monkeypatch):
    monkeypatch.chdir(chain)  # provenance records paths relative to the project root
    params = small_params()["learn"]["runs"]
    for task in ("classification", "segmentation"):
        prompts_dir = chain / "artifacts" / f"prompts_{task}"
        assert sorted(path.name for path in prompts_dir.iterdir()) == ["prompts.safetensors", "provenance.json"]
        assert sum(path.stat().st_size for path in prompts_dir.iterdir()) < 2**20
        details = json.loads((prompts_dir / "provenance.json").read_text())["details"]
        assert details["design"] == params[task]["prompt_design"] and details["n_ctx"] == 4
        lines = (chain / "metrics" / f"learn_{task}" / "loss.csv").read_text().splitlines()
        assert lines[0] == "iteration,loss" and [line.split(",")[0] for line in lines[1:]] == ["0", "1", "2", "3"]
        assert all(np.isfinite(float(line.split(",")[1])) for line in lines[1:])
        rates = (chain / "metrics" / f"learn_{task}" / "lr.csv").read_text().splitlines()
        assert rates[1] == "0,1e-05" and float(rates[2].split(",")[1]) == pytest.approx(1e-3)

    cams = DenseMaps(chain / "artifacts" / "cams_fine.zarr", kind="cams")
    assert len(cams) == 6 and cams[0].shape[1:] == (4, 4) and 0 <= cams[0].min() and cams[0].max() <= 1
    for variant in ("coarse", "fine"):
        metrics = json.loads((chain / "metrics" / f"seeds_{variant}" / "metrics.json").read_text())
        assert 0.0 <= metrics["miou"] <= 1.0 and metrics["n_images"] == 6

    node = audit(chain / "metrics" / "seeds_fine")
    assert node.ok
    stages, current = [], node
    for name in ("labels", "cams", "prompts", "seeds", "cams", "prompts", "index"):
        current = next(child for child in current.children if child.name == name)
        stages.append(current.stage)
    assert stages == [
        "seeds",
        "cams",
        "learn_segmentation",
        "seeds",
        "cams",
        "learn_classification",
        "prepare",
    ]


def test_killed_learning_resumes_to_the_same_prompts(chain, monkeypatch):
    monkeypatch.chdir(chain)
    expected = sha256_path(chain / "artifacts" / "prompts_segmentation")
    expected_curve = (chain / "metrics" / "learn_segmentation" / "loss.csv").read_text()
    shutil.rmtree(chain / "artifacts" / "prompts_segmentation")

    from wsss_core.drivers import learn as train

    original, calls = train.batch_loss, {"n": 0}

    def dies_at_iteration_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # iteration 3; the checkpoint after iteration 2 (checkpoint_every 2) is on disk
            raise Killed
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "batch_loss", dies_at_iteration_three)
    with pytest.raises(Killed):
        invoke("learn", "segmentation", "--metrics", "killed_metrics")
    assert not (chain / "artifacts" / "prompts_segmentation").exists()
    calls["n"] = -100  # no more kills; count the iterations the resumed run computes
    run_ok("learn", "segmentation", "--metrics", "resumed_metrics")
    assert calls["n"] == -100 + 2  # iterations 2 and 3 only
    assert sha256_path(chain / "artifacts" / "prompts_segmentation") == expected
    assert (chain / "resumed_metrics" / "learn_segmentation" / "loss.csv").read_text() == expected_curve
    assert not list((chain / ".wsss_scratch").glob("prompts_segmentation-*"))


def test_stage_errors_name_the_problem(chain, monkeypatch, tmp_path):
    monkeypatch.chdir(chain)
    result = invoke("learn", "detection")
    assert result.exit_code == 1
    assert "learn.runs.detection: no such entry; defined: classification, segmentation" in result.output
    seeds = chain / "artifacts" / "seeds_coarse.zarr"
    seeds.rename(tmp_path / "seeds_coarse.zarr")  # the seeds stage has not run (or its output was removed)
    try:
        result = invoke("learn", "segmentation", "--artifacts", str(tmp_path))
    finally:
        (tmp_path / "seeds_coarse.zarr").rename(seeds)
    assert result.exit_code == 1 and "seeds_coarse.zarr: seeds not found (the learn run's `reads`" in result.output

    params = yaml.safe_load(Path("params.yaml").read_text())
    params["models"]["clip"]["seed"] = 1  # another random CLIP than the one the prompts were learned on
    other = tmp_path / "params.yaml"
    other.write_text(yaml.safe_dump(params, sort_keys=False))
    result = invoke("cams", "fine", "--params", str(other))  # fails before writing anything
    assert result.exit_code == 1 and "prompts were learned on CLIP" in result.output

    params["models"]["clip"]["seed"] = 0
    params["learn"]["training"]["augment"]["crop"] = 40
    other.write_text(yaml.safe_dump(params, sort_keys=False))
    result = invoke("learn", "classification", "--params", str(other), "--artifacts", str(tmp_path))
    assert result.exit_code == 1
    assert "learn.training.augment.crop: 40 is not a multiple of the patch size 16" in result.output


def test_a_few_training_steps_on_the_demo_reduce_the_loss(chain, monkeypatch):
    monkeypatch.chdir(chain)  # the index lists image paths relative to the project root
    from wsss_core.data.index import read_index
    from wsss_core.drivers.learn import TrainSettings, batch_loss, train_prompts
    from wsss_core.prompts.batches import AugmentSettings, TrainingBatches

    clip = load_clip("tiny", model_cfg=TINY_CLIP_CFG, random_init=True, device="cpu")
    dataset = read_index(chain / "artifacts" / "index" / "train.parquet")
    names = list(dataset.class_names[1:])
    runner, scale = VisualRunner(clip), float(clip.model.logit_scale.exp())
    augment = AugmentSettings(color_jitter=False, long_side=(64, 64), min_short_side=32, crop=32)
    # The tiny model's raw CAMs are ~1e-2, so the CAM loss needs a large step to move them.
    for design, loss, lr in (("unified_context", "mcl", 0.005), ("csc_prepend", "cal", 5.0)):
        seeds = chain / "artifacts" / "seeds_coarse.zarr" if loss == "cal" else None
        demo = TrainingBatches(
            [s.image_id for s in dataset.samples], [s.image_path for s in dataset.samples],
            [s.labels for s in dataset.samples], len(names), 6, augment, 0, clip.mean, clip.std, seeds,
            "seeds" if seeds else "image",
        )  # fmt: skip
        batch = demo[0]  # all six demo images with their coarse seeds, trained on repeatedly

        class SameBatch(torch.utils.data.Dataset):
            def __getitem__(self, iteration: int, batch=batch) -> dict:
                return batch

        prompts = FmaPrompts(clip, design, names, BACKGROUND, n_ctx=4)
        before = float(batch_loss(prompts, runner, batch, loss, scale).detach())
        settings = TrainSettings(iterations=5, loss=loss, batch_size=6, lr=lr, warmup_iterations=0)
        curve = train_prompts(prompts, clip, SameBatch(), settings, chain / f"scratch_{loss}" / "checkpoint.pt")
        after = float(batch_loss(prompts, runner, batch, loss, scale).detach())
        assert curve[0][1] == pytest.approx(before) and after < 0.8 * before, (loss, before, after)
