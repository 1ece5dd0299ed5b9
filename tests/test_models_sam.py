"""SAM access: strict, verified loading of official checkpoints; tiny random SAMs running segment-anything's tools."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from wsss_core.hashing import sha256_file
from wsss_core.models.checkpoints import CheckpointError
from wsss_core.models.compat import ensure_torchvision
from wsss_core.models.sam import OFFICIAL_CHECKPOINTS, SAM_MODEL_TYPES, build_sam, build_sam_from_config

ensure_torchvision()
import segment_anything  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402
from segment_anything import SamAutomaticMaskGenerator, SamPredictor  # noqa: E402

TINY = dict(
    encoder_embed_dim=32,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    image_size=64,
    vit_patch_size=16,
    window_size=2,
    prompt_embed_dim=32,
    mask_in_chans=8,
    decoder_depth=1,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
)
RECORD_KEYS = {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"}


def tiny_sam(seed: int = 0, **overrides):
    return build_sam_from_config(**{**TINY, **overrides}, seed=seed, device="cpu")


def state_dicts_equal(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_unknown_model_type_lists_the_three(tmp_path):
    with pytest.raises(ValueError, match="vit_h, vit_l, vit_b") as info:
        build_sam("vit_x", tmp_path / "sam.pth")
    assert "vit_x" in str(info.value)


@pytest.mark.parametrize("model_type", SAM_MODEL_TYPES)
def test_missing_checkpoint_fails_before_building(model_type, tmp_path, monkeypatch):
    def must_not_build(checkpoint=None):
        raise AssertionError("the model was built before the checkpoint was checked")

    monkeypatch.setitem(segment_anything.sam_model_registry, model_type, must_not_build)
    official = OFFICIAL_CHECKPOINTS[model_type]
    missing = tmp_path / official["file"]
    with pytest.raises(CheckpointError) as info:
        build_sam(model_type, missing, device="cpu")
    message = str(info.value)
    assert str(missing) in message and official["url"] in message


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_tiny_sam_round_trips_through_a_file(suffix, tmp_path):
    original = tiny_sam(seed=0)
    path = tmp_path / f"tiny{suffix}"
    state = original.sam.state_dict()
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file({key: value.contiguous() for key, value in state.items()}, str(path))

    # A different seed proves the weights come from the file, not from the random initialisation.
    loaded = build_sam_from_config(**TINY, seed=1, checkpoint=path, sha256=sha256_file(path), device="cpu")
    assert state_dicts_equal(loaded.sam, original.sam)
    assert not state_dicts_equal(tiny_sam(seed=1).sam, original.sam)
    assert loaded.provenance["checkpoint"] == {"path": str(path), "sha256": sha256_file(path)}
    assert "random_init" not in loaded.provenance and original.provenance["random_init"] == {"seed": 0}
    assert not loaded.sam.training


def test_wrong_sha256_is_rejected(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_sam().sam.state_dict(), path)
    with pytest.raises(CheckpointError, match="sha256") as info:
        build_sam_from_config(**TINY, checkpoint=path, sha256="0" * 64, device="cpu")
    assert str(path) in str(info.value)


def test_checkpoint_of_another_architecture_is_rejected(tmp_path):
    path = tmp_path / "deeper.pth"
    torch.save(tiny_sam(encoder_depth=3).sam.state_dict(), path)
    with pytest.raises(CheckpointError, match="image_encoder.blocks.2") as info:
        build_sam_from_config(**TINY, checkpoint=path, device="cpu")
    assert str(path) in str(info.value)


def test_build_sam_loads_strictly_through_the_official_builder(tmp_path, monkeypatch):
    # The official ViT-B is too large for a unit test; its builder is replaced by a tiny one of the same classes.
    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_b", lambda checkpoint=None: tiny_sam(seed=5).sam)
    weights = tiny_sam(seed=0).sam
    path = tmp_path / "my_finetuned_sam.pth"
    torch.save(weights.state_dict(), path)

    handle = build_sam("vit_b", path, device="cpu")
    assert state_dicts_equal(handle.sam, weights)
    assert handle.model_type == "vit_b" and handle.device == torch.device("cpu")
    assert handle.provenance == {"model_type": "vit_b", "checkpoint": {"path": str(path), "sha256": sha256_file(path)}}


def test_a_file_with_an_official_name_must_have_the_official_hash(tmp_path, monkeypatch):
    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_b", lambda checkpoint=None: tiny_sam(seed=5).sam)
    path = tmp_path / OFFICIAL_CHECKPOINTS["vit_b"]["file"]
    torch.save(tiny_sam().sam.state_dict(), path)
    with pytest.raises(CheckpointError, match=OFFICIAL_CHECKPOINTS["vit_b"]["sha256"]):
        build_sam("vit_b", path, device="cpu")
    # An explicit hash says the user means this file.
    handle = build_sam("vit_b", path, sha256=sha256_file(path), device="cpu")
    assert handle.provenance["checkpoint"]["sha256"] == sha256_file(path)


def test_config_with_official_sizes_matches_the_official_architecture():
    ours = build_sam_from_config(
        encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12, encoder_global_attn_indexes=[2, 5, 8, 11],
        device="cpu",
    ).sam  # fmt: skip
    with torch.device("meta"):  # the official model only for its shapes: no memory, no time
        official = segment_anything.sam_model_registry["vit_b"]()
    ours_shapes = {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    official_shapes = {key: tuple(value.shape) for key, value in official.state_dict().items()}
    assert ours_shapes == official_shapes


def test_same_seed_gives_identical_weights_and_leaves_the_global_rng_alone():
    rng_before = torch.random.get_rng_state()
    first, second, other = tiny_sam(seed=3), tiny_sam(seed=3), tiny_sam(seed=4)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert state_dicts_equal(first.sam, second.sam)
    assert not state_dicts_equal(first.sam, other.sam)
    assert first.provenance == second.provenance


@pytest.mark.parametrize(
    ("override", "named"),
    [({"image_size": 72}, "image_size"), ({"prompt_embed_dim": 36}, "prompt_embed_dim"),
     ({"decoder_num_heads": 3}, "prompt_embed_dim"), ({"encoder_global_attn_indexes": (2,)}, "encoder_global_attn")],
)  # fmt: skip
def test_inconsistent_sizes_are_rejected_by_name(override, named):
    with pytest.raises(ValueError, match=named):
        tiny_sam(**override)


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_predictor_gives_three_levels_per_point_at_image_size():
    predictor = SamPredictor(tiny_sam().sam)
    predictor.set_image(random_image(48, 64))
    point, label = np.array([[20.0, 30.0]]), np.array([1])

    masks, scores, low_res = predictor.predict(point_coords=point, point_labels=label, multimask_output=True)
    assert masks.shape == (3, 48, 64) and masks.dtype == bool
    assert scores.shape == (3,) and low_res.shape == (3, 16, 16)  # 4x the 4x4 embedding grid

    single, single_scores, _ = predictor.predict(point_coords=point, point_labels=label, multimask_output=False)
    assert single.shape == (1, 48, 64) and single_scores.shape == (1,)


def test_predictions_are_deterministic():
    image, point, label = random_image(64, 64, seed=1), np.array([[32.0, 32.0]]), np.array([1])
    results = []
    for _ in range(2):
        predictor = SamPredictor(tiny_sam(seed=2).sam)
        predictor.set_image(image)
        results.append(predictor.predict(point_coords=point, point_labels=label, multimask_output=True))
    for first, second in zip(*results, strict=True):
        np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("output_mode", ["binary_mask", "coco_rle"])
def test_automatic_mask_generator_runs_end_to_end(output_mode):
    height, width = 48, 64
    generator = SamAutomaticMaskGenerator(
        tiny_sam().sam, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, output_mode=output_mode
    )
    records = generator.generate(random_image(height, width))
    assert len(records) <= 4 * 4 * 3  # at most three masks per grid point survive
    for record in records:  # random weights guarantee no count; every record returned must follow the schema
        assert set(record) == RECORD_KEYS
        if output_mode == "coco_rle":
            assert record["segmentation"]["size"] == [height, width]
            mask = mask_utils.decode(record["segmentation"]).astype(bool)
        else:
            mask = record["segmentation"]
        assert mask.shape == (height, width)
        assert record["area"] == int(mask.sum())
        assert len(record["bbox"]) == 4 and record["crop_box"] == [0, 0, width, height]
        assert len(record["point_coords"]) == 1 and len(record["point_coords"][0]) == 2
