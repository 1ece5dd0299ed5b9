"""VDA: its maths (wsss_core/adapter/inn.py, gmm.py) on cases checked by hand or against autograd's Jacobian; its
prototypes and fused CAMs (vda_model.py) by hand; its schedule and exact resume (vda.py on the adapter loop)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from tests.conftest import TINY_CLIP_CFG
from tests.test_adapter import BACKGROUND, NAMES, RUN, Images, _state_bytes, settings
from tests.test_stages import Killed
from wsss_core.adapter import vda
from wsss_core.adapter.gmm import (
    GaussianMixture,
    component_scores,
    farthest_points,
    mixture_nll,
    responsibilities,
)
from wsss_core.adapter.inn import ActNorm, AffineCoupling, InvertibleNetwork
from wsss_core.adapter.training import train
from wsss_core.models.clip import load_clip
from wsss_core.models.clip_text import encode_text
from wsss_core.prompts import prompts_for


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Move every parameter off its identity initialisation, so the maps are not trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))


def _log_det_by_autograd(function, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of a map of one D-vector, from autograd's full Jacobian."""
    jacobian = torch.autograd.functional.jacobian(lambda v: function(v[None])[0][0], x)
    return torch.linalg.slogdet(jacobian)[1]


def test_a_coupling_layer_starts_as_the_identity_and_keeps_one_half():
    layer = AffineCoupling(4, 8)
    x = torch.randn(5, 4)
    z, log_det = layer(x)
    torch.testing.assert_close(z, x)
    assert torch.all(log_det == 0)
    _randomise(layer)
    z, _ = layer(x)
    torch.testing.assert_close(z[:, :2], x[:, :2])  # z_1 = u_1
    assert not torch.allclose(z[:, 2:], x[:, 2:])
    swapped = AffineCoupling(4, 8, swap=True)
    _randomise(swapped)
    torch.testing.assert_close(swapped(x)[0][:, 2:], x[:, 2:])  # the other half kept


def test_a_coupling_layer_with_a_constant_scale_is_the_hand_computed_affine_map():
    layer = AffineCoupling(4, 8)
    with torch.no_grad():
        layer.scale.bias.fill_(0.5)  # s = tanh(0.5) * exp(0) for every input
        layer.shift.bias.copy_(torch.tensor([1.0, -2.0]))
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    z, log_det = layer(x)
    s = math.tanh(0.5)
    torch.testing.assert_close(z, torch.tensor([[1.0, 2.0, 3 * math.exp(s) + 1, 4 * math.exp(s) - 2]]))
    torch.testing.assert_close(log_det, torch.tensor([2 * s]))


def test_actnorm_initialises_from_its_first_batch_and_inverts():
    norm = ActNorm(3)
    x = torch.tensor([[1.0, 10.0, -4.0], [3.0, 14.0, -2.0]])  # per channel: mean 2, 12, -3; std 1, 2, 1
    y, log_det = norm(x)
    torch.testing.assert_close(y, torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(log_det, torch.full((2,), -math.log(2.0)), atol=1e-5, rtol=0)
    y2, _ = norm(x + 1)  # initialised once: the same affine map, shifted input
    torch.testing.assert_close(y2, y + norm.log_scale.exp(), atol=1e-5, rtol=0)
    torch.testing.assert_close(norm.inverse(y), x, atol=1e-5, rtol=0)


def test_the_network_inverts_to_float_precision_and_its_log_determinant_is_exact():
    torch.manual_seed(0)
    network = InvertibleNetwork(4, layers=6, hidden=16).double()
    x = torch.randn(64, 4, dtype=torch.float64)
    network(x)  # ActNorm's data-dependent initialisation
    _randomise(network, seed=1)
    network.eval()
    z, log_det = network(x)
    torch.testing.assert_close(network.inverse(z), x, atol=1e-10, rtol=0)
    for row in range(3):
        torch.testing.assert_close(log_det[row], _log_det_by_autograd(network, x[row]), atol=1e-9, rtol=0)
    assert len(network.steps) == 12  # 6 coupling layers, each followed by ActNorm
    float_network = InvertibleNetwork(8, layers=6, hidden=16)
    float_network(torch.randn(32, 8))
    _randomise(float_network, seed=2)
    x = torch.randn(16, 8)
    z = float_network(x)[0]
    # float32 precision: the round trip's error relative to the largest value it passes through (|z| reaches ~30 here;
    # 1.6e-5 absolute on an Intel Xeon with AVX-512, 4 ulps of z), far below a wrong inverse's error of order |x|
    assert (float_network.inverse(z) - x).abs().max() < 64 * torch.finfo(torch.float32).eps * z.abs().max()


def test_mixture_nll_is_the_hand_computed_log_sum_exp():
    # D = 1, two components at 0 and 2 with weights 1/2: at z = 0, -LSE = -log(0.5 e^0 + 0.5 e^-2)
    z, means, log_weights = torch.tensor([[0.0]]), torch.tensor([[0.0], [2.0]]), torch.log(torch.tensor([0.5, 0.5]))
    expected = -math.log(0.5 + 0.5 * math.exp(-2.0)) - 0.25  # log|det J| 0.25 is subtracted
    assert mixture_nll(z, torch.tensor([0.25]), means, log_weights).item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(
        component_scores(z, means, log_weights), torch.log(torch.tensor([[0.5, 0.5]])) - torch.tensor([[0.0, 2.0]])
    )
    posterior = responsibilities(z, means, log_weights)
    torch.testing.assert_close(posterior, torch.tensor([[1 / (1 + math.exp(-2)), math.exp(-2) / (1 + math.exp(-2))]]))
    with pytest.raises(ValueError, match="must agree"):
        component_scores(torch.zeros(1, 2), means, log_weights)


def _started(mixture: GaussianMixture, means: list[list[float]]) -> GaussianMixture:
    with torch.no_grad():
        mixture.means.copy_(torch.tensor(means))
        mixture.started.fill_(True)
    return mixture


def test_the_intra_class_loss_uses_only_the_class_components():
    mixture = _started(GaussianMixture(classes=2, dim=1, per_class=2), [[0.0], [1.0], [10.0], [11.0]])
    z, log_det = torch.tensor([[0.0]]), torch.zeros(1)
    own = mixture.nll(z, log_det, torch.tensor([0]))
    expected = -torch.logsumexp(torch.log(torch.tensor([0.25, 0.25])) - torch.tensor([0.0, 0.5]), 0)
    torch.testing.assert_close(own, expected)
    # the other class's components are 50 and 60.5 away: its loss is far larger, and the full mixture's is close to
    # the own class's
    assert mixture.nll(z, log_det, torch.tensor([1])) > own + 40
    torch.testing.assert_close(mixture.nll(z, log_det), own, atol=1e-6, rtol=0)


def test_components_start_from_the_first_batch_holding_enough_of_their_class():
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [1.0, 1.0], [9.0, 9.0]])
    classes = torch.tensor([0, 0, 0, 0, 1])
    inter = GaussianMixture(classes=3, dim=2)
    inter.start(z, classes)
    assert inter.started.tolist() == [True, True, False]
    torch.testing.assert_close(inter.means[:2], torch.tensor([[0.75, 1.25], [9.0, 9.0]]))
    # the loss runs over the started components only: class 2's mean (still 0) would otherwise win for z = 0
    with torch.no_grad():
        inter.means[2] = torch.tensor([0.0, 0.0])
    first = torch.tensor([[0.0, 0.0]])
    expected = -torch.logsumexp(inter.log_weights[:2] - 0.5 * torch.tensor([0.75**2 + 1.25**2, 162.0]), 0)
    torch.testing.assert_close(inter.nll(first, torch.zeros(1)), expected)
    inter.start(z + 100, classes)  # started once: later batches leave the means to the optimiser
    torch.testing.assert_close(inter.means[:2], torch.tensor([[0.75, 1.25], [9.0, 9.0]]))

    intra = GaussianMixture(classes=2, dim=2, per_class=2)
    intra.start(z, classes)  # class 1 has one latent for two components: not started
    assert intra.started.tolist() == [True, False]
    # seeds: the farthest from the mean (0.75, 1.25), (0, 4), then the farthest from both, (2, 0); k-means then
    # moves the second to the mean of the three points nearest it
    assert farthest_points(z[:4], 2).tolist() == [2, 1]
    torch.testing.assert_close(intra.means[:2], torch.tensor([[0.0, 4.0], [1.0, 1 / 3]]))
    assert intra.nll(z[4:], torch.zeros(1), classes[4:]).item() == 0.0  # its class has not started
    assert farthest_points(torch.tensor([[1.0], [1.0], [1.0]]), 3).tolist() == [0, 1, 2]  # repeats still distinct


def test_gradients_reach_the_network_the_means_and_the_weights():
    torch.manual_seed(0)
    network, mixture = InvertibleNetwork(4, layers=2, hidden=8), GaussianMixture(classes=3, dim=4)
    z, log_det = network(torch.randn(10, 4))
    mixture.start(z.detach(), torch.arange(10) % 3)
    mixture.nll(z, log_det).backward()
    assert mixture.means.grad.abs().sum() > 0 and mixture.log_weights.grad.abs().sum() > 0
    assert all(p.grad is not None for p in network.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------- the model and loop

VDA_RUN = {
    **RUN,
    **dict(inn_layers=2, inn_hidden=16, intra_components=2, description_weight=1.0, inn_from=1, intra_from=2),
    "gmm_weight": 1.0,
}


@pytest.fixture(scope="module")
def clip():
    return load_clip("tiny", model_cfg=TINY_CLIP_CFG, random_init=True, device="cpu", seed=2)


@pytest.fixture(scope="module")
def vda_texts(clip):
    return encode_text(clip, prompts_for(NAMES + BACKGROUND))


def test_an_image_prototype_is_its_class_components_weighed_by_responsibility(clip, vda_texts):
    model = vda.build_model(clip, vda_texts, len(NAMES), VDA_RUN).eval()  # ActNorm unstarted, couplings: identity
    dim = vda_texts.shape[1]
    first, second = torch.zeros(dim), torch.zeros(dim)
    first[0], second[1] = 1.0, 1.0
    _started(model.intra, [first.tolist(), second.tolist()] + [[0.0] * dim] * 4)
    model.intra.started[1:] = False
    # two tokens of an image: (0.6, 0.8, 0...) under class 1's CAM, the other at weight 0
    features = torch.zeros(3, dim)
    features[1, :2] = torch.tensor([0.6, 0.8])
    features[2, 2] = 1.0
    cams = torch.zeros(len(NAMES), 1, 2)
    cams[0, 0, 0] = 0.5
    queries = model.image_prototypes(features, cams, [1, 2])
    pooled = torch.zeros(dim)
    pooled[:2] = torch.tensor([0.6, 0.8])
    posterior = torch.softmax(-0.5 * torch.stack([(pooled - first).pow(2).sum(), (pooled - second).pow(2).sum()]), 0)
    prototype = posterior[0] * first + posterior[1] * second
    torch.testing.assert_close(queries[0], prototype / prototype.norm())
    # the other classes take the prototypes kept at the end: components weighed by their learnt weights
    with torch.no_grad():
        model.intra.log_weights[:2] = torch.log(torch.tensor([0.25, 0.75]))
    kept = 0.25 * first + 0.75 * second
    torch.testing.assert_close(model.assembled_prototypes()[0], kept / kept.norm())
    torch.testing.assert_close(queries[1:], model.assembled_prototypes()[1:])


def test_text_cams_fuse_with_the_surgery_cams_of_the_ready_prototypes(clip, vda_texts):
    from wsss_core.adapter.model import surgery_cams
    from wsss_core.cam.excel.cams import MINMAX_EPSILON, minmax_per_map

    model = vda.build_model(clip, vda_texts, len(NAMES), VDA_RUN).eval()
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 5, vda_texts.shape[1], generator=generator)
    text = torch.rand(2, len(NAMES), 2, 2, generator=generator)
    queries = torch.randn(2, len(NAMES), vda_texts.shape[1], generator=generator)
    one = torch.tensor([True, False, False])
    assert torch.equal(model.fused_cams(features, text, queries, one), text)  # surgery needs two queries
    ready = torch.tensor([True, False, True])
    fused = model.fused_cams(features, text, queries, ready)
    torch.testing.assert_close(fused[:, 1], text[:, 1])  # not ready: the text CAM as it is
    visual = surgery_cams(features[1:], queries[1, [0, 2]], 2, (2, 2))[0]
    expected = minmax_per_map(text[1, [0, 2]] + VDA_RUN["description_weight"] * visual, MINMAX_EPSILON)
    torch.testing.assert_close(fused[1, [0, 2]], expected)

    # a trained model keeps its prototypes and fuses its own CAMs with them; before that its CAMs are ExCEL's
    images = torch.randn(1, 3, 32, 32, generator=generator)
    before = model(images, lvc=True)
    _started(model.intra, torch.randn(6, vda_texts.shape[1], generator=generator).tolist())
    model.keep_prototypes()
    after = model(images, lvc=True)
    queries = model.prototypes.expand(1, -1, -1)
    torch.testing.assert_close(after.cams, model.fused_cams(before.static_features, before.cams, queries, model.kept))
    torch.testing.assert_close(
        after.lvc_cams, model.fused_cams(before.lvc_features, before.lvc_cams, queries, model.kept)
    )
    assert not torch.equal(after.cams, before.cams) and torch.equal(after.logits, before.logits)


def _vda_settings(**changes):
    return replace(settings(**changes), extra_lr_scales=(("inn", 10.0),))


def test_the_schedule_warms_up_on_template_texts_then_trains_the_mixtures(clip, vda_texts, tmp_path, monkeypatch):
    from wsss_core.adapter.vda_model import VdaAdapterModel

    described = []
    real = VdaAdapterModel.described_cams
    monkeypatch.setattr(VdaAdapterModel, "described_cams", lambda self, *a: described.append(1) or real(self, *a))
    run = {**VDA_RUN, "inn_from": 2, "intra_from": 3}
    model = vda.build_model(clip, vda_texts, len(NAMES), run)
    untouched = _state_bytes(model.inn)
    curve = train(
        model,
        Images(),
        _vda_settings(iterations=2),
        device="cpu",
        work_dir=tmp_path / "a",
        step_loss=vda.make_step(run),
    )
    assert _state_bytes(model.inn) == untouched and not model.inter.started.any()  # warm-up: template texts only
    assert [row["inter_loss"] for row in curve] == [0.0, 0.0] and not described
    model = vda.build_model(clip, vda_texts, len(NAMES), run)
    curve = train(model, Images(), _vda_settings(), device="cpu", work_dir=tmp_path / "b", step_loss=vda.make_step(run))
    assert [row["inter_loss"] != 0 for row in curve] == [False, False, True, True]
    assert [row["intra_loss"] != 0 for row in curve] == [False, False, False, True]
    assert len(described) == 1  # CAMs fused with the prototypes make the labels from intra_from on
    assert _state_bytes(model.inn) != untouched and model.intra.started.any()
    model.keep_prototypes()
    assert model.kept.any() and torch.equal(model.kept, model.intra.started)


def test_vda_training_resumes_to_the_same_bytes(clip, vda_texts, tmp_path):
    whole = vda.build_model(clip, vda_texts, len(NAMES), VDA_RUN)
    step = vda.make_step(VDA_RUN)
    curve = train(whole, Images(), _vda_settings(), device="cpu", work_dir=tmp_path / "whole", step_loss=step)

    def kill_at_three(done: int) -> None:
        if done == 3:
            raise Killed

    interrupted = vda.build_model(clip, vda_texts, len(NAMES), VDA_RUN)
    with pytest.raises(Killed):
        train(
            interrupted,
            Images(),
            _vda_settings(),
            device="cpu",
            work_dir=tmp_path / "r",
            on_step=kill_at_three,
            step_loss=step,
        )
    resumed = vda.build_model(clip, vda_texts, len(NAMES), VDA_RUN)
    assert train(resumed, Images(), _vda_settings(), device="cpu", work_dir=tmp_path / "r", step_loss=step) == curve
    assert _state_bytes(resumed) == _state_bytes(whole)
    assert {"inn.steps.1.initialized", "intra.started", "inter.means", "prototypes"} <= set(whole.state_dict())


def test_params_name_what_a_vda_run_must_read_and_its_schedule(tmp_path):
    import yaml

    from wsss_core.params import ParamsError, load_params
    from wsss_core.params.pipeline import pipeline_problems

    path = tmp_path / "params.yaml"
    run = {"method": "vda", "reads": "artifacts/descriptions_voc"}
    path.write_text(yaml.safe_dump({"adapt": {"runs": {"x": run}}}))
    params = load_params(path)
    run = params["adapt"]["runs"]["x"]
    assert (run["inn_from"], run["intra_from"], run["inn_layers"], run["iterations"]) == (8000, 10000, 6, 30000)
    assert "attribute_top_fraction" not in run  # no attribute bank
    problems = pipeline_problems(params, files=False)
    assert (
        "adapt.runs.x.reads: 'artifacts/descriptions_voc' is not artifacts/index (vda reads nothing else)" in problems
    )
    with pytest.raises(ParamsError, match=r"adapt\.runs\.x\.intra_from: 10 is before inn_from \(20\)"):
        vda.check_schedule({**run, "inn_from": 20, "intra_from": 10}, "adapt.runs.x")
