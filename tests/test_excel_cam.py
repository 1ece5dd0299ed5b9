"""ExCEL's training-free CAM (wsss_core/cam/excel/, method `excel`): TSE and feature surgery on hand-checkable cases,
SVC on a tiny random CLIP, and the method end to end through the CAM driver with an attribute bank written here."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import TINY_CLIP_CFG, small_params
from tests.test_stages import run_ok
from wsss_core.cam.excel.attributes import aggregate_attributes, attribute_weights, dropped_count
from wsss_core.cam.excel.cams import ExcelCams, ExcelSettings, minmax_per_map, share_against_background
from wsss_core.cam.excel.surgery import feature_surgery, normalize_over_tokens
from wsss_core.cam.excel.svc import intra_correlation, svc_forward
from wsss_core.cam.methods.excel import read_attribute_bank
from wsss_core.models.clip import load_clip
from wsss_core.models.clip_visual import VisualRunner
from wsss_core.prompts import CLIP_ES_BACKGROUND_VOC, CLIP_ES_TEMPLATE, prompts_for
from wsss_core.store.table import ArtifactError

NAMES = ["disc", "square", "triangle", "star"]
EMBED = TINY_CLIP_CFG["embed_dim"]


def write_bank(directory: Path, features: np.ndarray, flags: np.ndarray) -> Path:
    """An attribute bank as a describe run writes it: directory/bank.zarr, attr_features (D, B), attr_flag (C, B)."""
    import zarr

    group = zarr.open_group(str(Path(directory) / "bank.zarr"), mode="w")
    group.create_array("attr_features", data=np.asarray(features, dtype=np.float32))
    group.create_array("attr_flag", data=np.asarray(flags, dtype=np.float32))
    return Path(directory)


def random_bank(num_classes: int, dim: int = EMBED, size: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((dim, size))
    features *= 0.8 / np.linalg.norm(features, axis=0)  # KMeans centres of unit vectors lie inside the sphere
    return features.astype(np.float32), (rng.random((num_classes, size)) < 0.2).astype(np.float32)


@pytest.fixture(scope="module")
def clip():
    return load_clip("tiny", model_cfg=TINY_CLIP_CFG, random_init=True, device="cpu", seed=2)


# ---------------------------------------------------------------------------------------------------------- TSE


def test_dropped_count_is_the_references_float_truncation():
    assert dropped_count(112, 0.9) == 11 and dropped_count(224, 0.9) == 22
    assert dropped_count(10, 0.9) == 0  # (1 - 0.9) * 10 = 0.9999999999999998
    assert dropped_count(4, 0.5) == 2 and dropped_count(4, 1.0) == 0
    with pytest.raises(ValueError, match="top_fraction"):
        dropped_count(4, 0.0)


def test_attribute_aggregation_by_hand():
    # D = 2, B = 4 attributes; keep the top half of each class's similarities
    attributes = torch.tensor([[1.0, 0.0, -1.0, 0.6], [0.0, 1.0, 0.0, 0.8]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, -0.8]])  # two classes, one background word
    weights = attribute_weights(text[:2], attributes, 0.5)
    # class 1: similarities (1, 0, -1, 0.6): drops attributes 1 and 2; class 2: (0, 1, 0, 0.8): drops 0 and 2
    e = math.exp
    torch.testing.assert_close(weights[0], torch.tensor([e(1) / (e(1) + e(0.6)), 0, 0, e(0.6) / (e(1) + e(0.6))]))
    torch.testing.assert_close(weights[1], torch.tensor([0, e(1) / (e(1) + e(0.8)), 0, e(0.8) / (e(1) + e(0.8))]))
    enriched = aggregate_attributes(text, attributes, 2, top_fraction=0.5)
    first = text[0] + weights[0, 0] * attributes[:, 0] + weights[0, 3] * attributes[:, 3]
    torch.testing.assert_close(enriched[0], first / first.norm())
    torch.testing.assert_close(enriched[2], text[2])  # background rows are only re-normalised
    torch.testing.assert_close(enriched.norm(dim=1), torch.ones(3))


def test_attribute_aggregation_with_nothing_dropped_is_a_plain_softmax():
    attributes, _ = random_bank(3, dim=8, size=10)
    text = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    attributes = torch.from_numpy(attributes)
    weights = attribute_weights(text[:3], attributes, 0.9)  # int(0.999...) = 0 dropped; the reference gives NaN here
    torch.testing.assert_close(weights, (text[:3] @ attributes).softmax(dim=-1))
    assert torch.isfinite(aggregate_attributes(text, attributes, 3)).all()
    with pytest.raises(ValueError, match="share D"):
        aggregate_attributes(text, attributes[:4], 3)


# ------------------------------------------------------------------------------------------------------ surgery


def test_feature_surgery_by_hand():
    features = torch.tensor([[[0.5, 0.0], [1.0, 1.0], [0.0, 2.0], [2.0, 0.0]]])  # CLS + 3 patches, E = 2
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    prob = torch.tensor([1.0, 0.0]).softmax(dim=0)  # softmax(2 * f_cls . T)
    w = prob / prob.mean()
    sim = features[0] @ texts.T  # (4, 2)
    surgery = sim * w - (sim * w).mean(dim=1, keepdim=True)
    expected = (surgery - surgery.min(dim=0).values) / (surgery.max(dim=0).values - surgery.min(dim=0).values)
    result = feature_surgery(features, texts)
    torch.testing.assert_close(result[0], expected)
    # CLS takes part in the min-max: each text reaches 0 and 1 somewhere over all four tokens
    torch.testing.assert_close(result.amin(dim=1), torch.zeros(1, 2))
    torch.testing.assert_close(result.amax(dim=1), torch.ones(1, 2))


def test_feature_surgery_element_wise_form_and_constant_columns():
    gen = torch.Generator().manual_seed(1)
    features, texts = torch.randn(2, 7, 5, generator=gen), torch.randn(3, 5, generator=gen)
    prob = (2 * features[:, :1] @ texts.T).softmax(-1)
    w = prob / prob.mean(-1, keepdim=True)
    product = features[:, :, None, :] * texts[None, None] * w[..., None]  # the reference's (B, N, K, E) form
    surgery = (product - product.mean(2, keepdim=True)).sum(-1)
    low, high = surgery.amin(1, keepdim=True), surgery.amax(1, keepdim=True)
    torch.testing.assert_close(feature_surgery(features, texts), (surgery - low) / (high - low), atol=1e-5, rtol=1e-5)
    same = torch.ones(1, 4, 5)  # every token alike: S is constant over the tokens -> 0, not NaN
    assert torch.equal(feature_surgery(same, texts), torch.zeros(1, 4, 3))


def test_normalisation_runs_over_tokens():
    features = torch.randn(2, 9, 4, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(normalize_over_tokens(features).norm(dim=1), torch.ones(2, 4))


# ---------------------------------------------------------------------------------------------------------- SVC


def test_intra_correlation_rows_sum_to_one_and_match_a_direct_computation():
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=gen) for _ in range(3))
    maps = intra_correlation(q, k, v)
    torch.testing.assert_close(maps.sum(dim=-1), torch.ones(1, 2, 5))
    for head in range(2):
        direct = np.zeros((5, 5))
        for x in (q, k, v):
            tokens = x[0, head].numpy().astype(np.float64)
            logits = tokens @ tokens.T * 4**-0.5
            direct += np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True) / 3
        np.testing.assert_allclose(maps[0, head].numpy(), direct, rtol=1e-5, atol=1e-6)


def test_svc_leaves_the_original_path_unchanged_and_calibrates_the_patches(clip):
    runner = VisualRunner(clip)
    images = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(4))
    plain = runner.forward(images)
    result = svc_forward(runner, images, layers=1, capture_layers=(-2, -1))
    assert result.grid == (3, 4) and result.features.shape == (2, 13, EMBED) and result.first_calibrated == 2
    torch.testing.assert_close(result.original, plain.tokens[-1], atol=1e-5, rtol=1e-5)
    assert sorted(result.attentions) == [1, 2] and result.attentions[2].shape == (2, 4, 13, 13)
    # one calibrated block, by hand: the tokens entering it + out_proj(sum_h S_h v_h), CLS from the original path
    entering = plain.tokens[-2]
    q, k, v = runner.qkv(2, runner.blocks[2].ln_1(entering))
    calibrated = entering + runner.merge_heads(2, intra_correlation(q, k, v).sum(dim=1, keepdim=True) @ v)
    torch.testing.assert_close(result.features[:, 1:], runner.project(calibrated)[:, 1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.features[:, :1], runner.project(plain.tokens[-1])[:, :1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(result.features[:, 1:], runner.project(plain.tokens[-1])[:, 1:], atol=1e-3)
    # more calibrated blocks: same shapes, the original path still untouched
    deeper = svc_forward(runner, images, layers=3)
    torch.testing.assert_close(deeper.original, plain.tokens[-1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="svc layers must be in 1..3"):
        svc_forward(runner, images, layers=4)


def test_svc_runs_another_methods_map_when_given_one(clip):
    from wsss_core.cam.diclip.fusion import diclip_correlation

    runner = VisualRunner(clip)
    images = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(5))
    affinity = torch.rand(1, 12, 12, generator=torch.Generator().manual_seed(6))  # over the 3x4 patches
    result = svc_forward(runner, images, layers=1, correlation=diclip_correlation(affinity))
    entering = runner.forward(images).tokens[-2]
    q, k, v = runner.qkv(2, runner.blocks[2].ln_1(entering))
    fused = diclip_correlation(affinity)(SimpleNamespace(q=q, k=k, v=v)).sum(dim=1, keepdim=True)
    calibrated = entering + runner.merge_heads(2, fused @ v)
    torch.testing.assert_close(result.features[:, 1:], runner.project(calibrated)[:, 1:], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------- generator


def generator(clip, bank=None, **settings) -> ExcelCams:
    settings = {"svc_layers": 2, "caa_layers": 3, "input_size": 64, **settings}
    features = random_bank(len(NAMES))[0] if bank is None else bank
    return ExcelCams(
        clip,
        prompts_for(NAMES, CLIP_ES_TEMPLATE),
        prompts_for(CLIP_ES_BACKGROUND_VOC, CLIP_ES_TEMPLATE),
        features,
        ExcelSettings(**settings),
    )


@pytest.fixture(scope="module")
def image():
    picture = np.random.default_rng(0).integers(0, 256, size=(40, 72, 3), dtype=np.uint8)
    picture[8:30, 10:40] = (220, 30, 30)
    return picture


def test_cams_come_out_on_the_grid_asked_for(clip, image):
    result = generator(clip)(image, [3, 1])
    assert result.class_ids == [1, 3] and result.cams.shape == (2, 3, 5)  # ceil(40 / 16), ceil(72 / 16)
    assert result.cams.min() >= 0 and result.cams.max() <= 1
    at_image = generator(clip, store_resolution="image", caa=False, flip=True, scales=(1.0, 1.5))(image, [2])
    assert at_image.cams.shape == (1, 40, 72) and 0 <= at_image.cams.min() and at_image.cams.max() <= 1
    empty = generator(clip)(image, [])
    assert empty.class_ids == [] and empty.cams.shape == (0, 3, 5)
    with pytest.raises(ValueError, match="outside 1..4"):
        generator(clip)(image, [5])


def test_par_output_gives_the_references_argmax_under_the_power_background(clip, image):
    refined = torch.tensor([[[0.5, 0.2, 0.0]], [[0.4, 0.3, 0.0]], [[0.1, 0.25, 0.0]]])  # background, two classes
    shares = share_against_background(refined)
    torch.testing.assert_close(shares[:, 0, :2], torch.tensor([[0.4 / 0.9, 0.3 / 0.5], [0.1 / 0.6, 0.25 / 0.45]]))
    assert torch.equal(shares[:, 0, 2], torch.zeros(2))
    reference = refined.argmax(dim=0)  # background first: it wins ties, as seeds' label_from_cams
    ours = torch.cat([1 - shares.amax(dim=0, keepdim=True), shares]).argmax(dim=0)
    assert torch.equal(ours, reference)
    result = generator(clip, store_resolution="image", refine="par", par_iterations=3)(image, [1, 2])
    assert result.cams.shape == (2, 40, 72) and result.cams.min() >= 0 and result.cams.max() <= 1


def test_minmax_epsilons():
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]]])
    torch.testing.assert_close(minmax_per_map(maps, 1e-7), (maps - 1) / (4 + 1e-7))


def test_settings_are_checked(clip):
    with pytest.raises(ValueError, match="needs store_resolution 'image'"):
        ExcelSettings(refine="par")
    with pytest.raises(ValueError, match="scales must include 1.0"):
        ExcelSettings(scales=(0.5, 1.5))
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        generator(clip, input_size=72)
    with pytest.raises(ValueError, match="svc_layers must be in 1..3"):
        generator(clip, svc_layers=5)
    with pytest.raises(ValueError, match=f"D = {EMBED}"):
        generator(clip, bank=np.ones((EMBED + 1, 4), dtype=np.float32))


# ----------------------------------------------------------------------------------------- method, via the driver


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("excel")
    (root / "params.yaml").write_text(yaml.safe_dump(small_params(), sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        run_ok("demo_data")
        run_ok("prepare")
    return root


def _run(indexed, **settings) -> dict:
    from wsss_core.params import load_params

    params = yaml.safe_load((indexed / "params.yaml").read_text())
    params["cams"]["runs"] = {"ex": {"method": "excel", "reads": "artifacts/descriptions_t", **settings}}
    (indexed / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return load_params(indexed / "params.yaml")


def test_excel_method_writes_a_cam_artifact_through_the_driver(indexed, monkeypatch):
    from wsss_core.data.index import read_index
    from wsss_core.drivers.cams import write_cams
    from wsss_core.store import DenseMaps

    monkeypatch.chdir(indexed)
    index = Path("artifacts/index/train.parquet")
    num_classes = len(read_index(index).class_names) - 1
    write_bank(Path("artifacts/descriptions_t"), *random_bank(num_classes))
    settings = {"store_resolution": "image", "svc_layers": 2, "caa_layers": 3, "input_size": 64, "refine": "par"}
    params = _run(indexed, **settings)
    assert params["cams"]["runs"]["ex"]["attribute_top_fraction"] == 0.9  # defaults filled in
    written = write_cams("ex", index, Path("artifacts/cams_ex.zarr"), params)
    cams = DenseMaps(written, kind="cams")
    assert len(cams) == 6
    for item in range(len(cams)):
        maps = cams[item]
        assert maps.shape == (len(cams.classes(item)), 64, 64) and maps.min() >= 0 and maps.max() <= 1
    provenance = cams.provenance
    assert provenance["details"]["variant"] == "par" and provenance["details"]["attributes"] == 12
    assert "descriptions" in provenance["upstream"]


def test_a_bank_of_another_clip_or_dataset_is_refused_naming_the_path(indexed, monkeypatch):
    from wsss_core.data.index import read_index
    from wsss_core.drivers.cams import write_cams
    from wsss_core.params import ParamsError

    monkeypatch.chdir(indexed)
    index = Path("artifacts/index/train.parquet")
    num_classes = len(read_index(index).class_names) - 1
    params = _run(indexed, svc_layers=2, caa_layers=3, input_size=64)
    features, flags = random_bank(num_classes)
    write_bank(Path("artifacts/descriptions_t"), np.ones((EMBED + 8, 12), dtype=np.float32), flags)
    with pytest.raises(ArtifactError, match=r"descriptions_t/bank\.zarr: attr_features has D = 40 dims.* 32"):
        write_cams("ex", index, Path("artifacts/cams_bad.zarr"), params)
    write_bank(Path("artifacts/descriptions_t"), features, flags[:3])
    with pytest.raises(ArtifactError, match=rf"attr_flag has shape \(3, 12\), expected \({num_classes}, 12\)"):
        write_cams("ex", index, Path("artifacts/cams_bad.zarr"), params)
    import zarr

    write_bank(Path("artifacts/descriptions_t"), features, flags)
    zarr.open_group("artifacts/descriptions_t/bank.zarr", mode="r+").attrs["class_names"] = ["x"] * num_classes
    with pytest.raises(ArtifactError, match=r"bank was built for the classes \['x'"):
        write_cams("ex", index, Path("artifacts/cams_bad.zarr"), params)
    with pytest.raises(ArtifactError, match=r"descriptions_none/bank\.zarr: no attribute bank"):
        read_attribute_bank(Path("artifacts/descriptions_none"), embed_dim=EMBED, num_foreground=num_classes)
    write_bank(Path("artifacts/descriptions_t"), features, flags)
    params = _run(indexed)  # the tiny CLIP has 3 blocks: ExCEL's 5 SVC blocks do not fit
    with pytest.raises(ParamsError, match="svc_layers must be in 1..3"):
        write_cams("ex", index, Path("artifacts/cams_bad.zarr"), params)
    assert not Path("artifacts/cams_bad.zarr").exists()
