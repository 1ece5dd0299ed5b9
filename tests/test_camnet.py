"""WeakTr's CAM network (wsss_core/camnet/): AAF by hand, the reference's map and feature order, which losses train
what, the position embedding, loading DeiT and CLIP checkpoints, the epoch schedule, exact resume, the CAMs'
flip handling and normalisation; the cam_net and net_cams stages end to end, byte-identical on rerun."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.test_stages import Killed, run_ok
from wsss_core.camnet.aaf import AdaptiveAttentionFusion
from wsss_core.camnet.weaktr import SETTINGS, build_network, cam_generator
from wsss_core.camnet.weaktr_network import per_map
from wsss_core.camnet.weaktr_training import epoch_lr, losses, train
from wsss_core.models.checkpoints import CheckpointError
from wsss_core.params.spec import validate_section

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32, "patch_size": 8}
CLASSES = 3


def tiny_run(**changes) -> dict:
    raw = {
        "backbone": {"overrides": TINY, "checkpoint": "unused.pth"},
        "reduction": 2.0,
        "feat_reduction": 4,
        "epochs": 3,
        "warmup_epochs": 1,
        "batch_size": 2,
        "augment": {"input_size": 32},
    }
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return validate_section(raw, SETTINGS, "cam_nets.runs.test")


def tiny_network(**changes):
    return build_network(tiny_run(**changes), CLASSES, pretrained=False).network.eval()


# ------------------------------------------------------------------------------------------------------------ AAF


def test_aaf_weights_by_hand():
    aaf = AdaptiveAttentionFusion(maps=2, reduction=2, head_dim=2, feat_reduction=2, pool="avg")
    with torch.no_grad():
        aaf.attn_feat_ffn[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
        aaf.attn_feat_ffn[0].bias.fill_(0.5)
        aaf.attn_feat_ffn[1].weight.fill_(2.0)
        aaf.attn_feat_ffn[1].bias.fill_(-1.0)
        aaf.attn_head_ffn[0].weight.copy_(torch.tensor([[0.1, -0.1]]))
        aaf.attn_head_ffn[2].weight.copy_(torch.tensor([[1.0], [-2.0]]))
    features = torch.tensor([[[[1.0, 0.0], [3.0, 2.0]], [[0.0, 0.0], [0.0, 1.0]]]])  # (1, 2 maps, 2 tokens, 2)
    # per map: mean over tokens -> 2 * (f0 + 2 f1 + 0.5) - 1; map 0: [2, 1] -> 8, map 1: [0, 0.5] -> 2
    # across maps: relu(0.1 * 8 - 0.1 * 2) = 0.6 -> sigmoid([0.6, -1.2])
    weights = aaf.map_weights(features).detach()
    assert weights.shape == (1, 2, 1, 1)
    torch.testing.assert_close(weights.flatten(), torch.sigmoid(torch.tensor([0.6, -1.2])))
    attention = torch.rand(1, 2, 2, 2)
    torch.testing.assert_close(aaf(features, attention).detach(), attention * weights)
    # max pooling takes each feature's largest token: map 0 [3, 2] -> 14, map 1 [0, 1] -> 4; relu(1.4 - 0.4) = 1
    aaf.pool = "max"
    torch.testing.assert_close(aaf.map_weights(features).detach().flatten(), torch.sigmoid(torch.tensor([1.0, -2.0])))


def test_aaf_refuses_reductions_that_leave_no_unit():
    with pytest.raises(ValueError, match="leaves no hidden unit"):
        AdaptiveAttentionFusion(maps=8, reduction=16, head_dim=32)
    with pytest.raises(ValueError, match="pool must be avg or max"):
        AdaptiveAttentionFusion(maps=8, reduction=2, head_dim=32, pool="sum")


def test_maps_are_head_major_and_a_heads_features_interleaved_channels():
    depth, heads, tokens, dim = 3, 2, 4, 6
    maps = [
        torch.full((1, heads, tokens, tokens), 10.0 * layer) + torch.arange(heads).view(1, heads, 1, 1)
        for layer in range(depth)
    ]
    outputs = [torch.arange(dim, dtype=torch.float32).expand(1, tokens, dim) + 100.0 * layer for layer in range(depth)]
    attention, features = per_map(maps, outputs, heads)
    assert attention.shape == (1, heads * depth, tokens, tokens) and features.shape == (1, heads * depth, tokens, 3)
    for head in range(heads):
        for layer in range(depth):
            index = head * depth + layer
            assert attention[0, index, 0, 0] == 10.0 * layer + head
            # channels d * heads + head of layer `layer`'s output
            expected = torch.tensor([d * heads + head + 100.0 * layer for d in range(dim // heads)])
            torch.testing.assert_close(features[0, index, 0], expected)


# -------------------------------------------------------------------------------------------------------- network


def test_each_loss_trains_what_the_reference_lets_it():
    """The attention and the coarse CAM are detached: the fine CAM's loss reaches only AAF; the class tokens' loss
    never reaches the conv head or AAF."""
    network = tiny_network().train()
    with torch.no_grad():  # every AAF unit active (a random start may switch its ReLU off)
        network.aaf.attn_head_ffn[0].weight.fill_(0.1)
        network.aaf.attn_feat_ffn[1].bias.fill_(1.0)
    images, targets = torch.rand(2, 3, 32, 32), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])

    def touched(term: str) -> set[str]:
        network.zero_grad(set_to_none=True)
        losses(network(images), targets)[term].backward()
        return {name.split(".")[0] for name, p in network.named_parameters() if p.grad is not None and p.grad.any()}

    assert touched("fine_loss") == {"aaf"}
    assert touched("token_loss") == {"cls_token", "pos_embed", "patch_embed", "blocks"}
    assert touched("coarse_loss") == {"head", "cls_token", "pos_embed", "patch_embed", "blocks"}


def test_the_position_embedding_is_resized_only_off_the_training_grid():
    network = tiny_network()
    assert network.position_embedding(4, 4, 32, 32) is network.pos_embed
    resized = network.position_embedding(5, 7, 40, 56)
    assert resized.shape == (1, CLASSES + 35, 32)
    torch.testing.assert_close(resized[:, :CLASSES], network.pos_embed[:, :CLASSES])
    # a non-square input of the same token count is resized too (the reference checks the pixel sides)
    assert network.position_embedding(2, 8, 16, 64).shape == (1, CLASSES + 16, 32)
    cams = network.cams(torch.rand(1, 3, 45, 60))  # sides not multiples of the patch: the remainder is dropped
    assert cams.shape == (1, CLASSES, 5, 7)


def test_a_deit_checkpoint_loads_with_the_cls_token_copied_per_class(tmp_path):
    from wsss_core.models.compat import ensure_torchvision

    ensure_torchvision()
    import timm

    deit = timm.create_model("deit_small_patch16_224", pretrained=False, num_classes=1000, **TINY)
    path = tmp_path / "deit.pth"
    torch.save({"model": deit.state_dict()}, path)  # as DeiT releases ship it, with the classifier
    built = build_network(tiny_run(backbone__checkpoint=str(path)), CLASSES, pretrained=True)
    network = built.network
    assert torch.equal(network.blocks[1].attn.qkv.weight, deit.blocks[1].attn.qkv.weight)
    assert torch.equal(network.cls_token, deit.cls_token.repeat(1, CLASSES, 1))
    assert torch.equal(network.pos_embed[:, :CLASSES], deit.pos_embed[:, :1].repeat(1, CLASSES, 1))
    assert torch.equal(network.pos_embed[:, CLASSES:], deit.pos_embed[:, 1:])
    assert built.checkpoints["vit"]["path"] == str(path)

    torch.save({"model": {"unrelated": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="other.pth"):
        build_network(tiny_run(backbone__checkpoint=str(tmp_path / "other.pth")), CLASSES, pretrained=True)


def test_an_open_clip_vision_tower_loads_as_the_backbone(tmp_path):
    """The demo starts WeakTr from its CLIP's vision tower: timm converts the open_clip keys, pre-norm included, and
    the blocks then compute what open_clip's transformer computes."""
    from safetensors.torch import save_file

    from tests.conftest import TINY_DEMO_CLIP_CFG
    from wsss_core.models.compat import ensure_torchvision

    ensure_torchvision()
    import open_clip

    torch.manual_seed(0)
    clip = open_clip.CLIP(**TINY_DEMO_CLIP_CFG).eval()
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    overrides = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
    run = tiny_run(
        backbone__arch="vit_base_patch16_clip_224",
        backbone__overrides=overrides,
        backbone__checkpoint=str(tmp_path / "clip.safetensors"),
    )
    network = build_network(run, 1, pretrained=True).network.eval()
    visual, images = clip.visual, torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        tokens = torch.cat(
            [visual.class_embedding.expand(2, 1, -1), visual.conv1(images).flatten(2).transpose(1, 2)], 1
        )
        expected = visual.transformer(visual.ln_pre(tokens + visual.positional_embedding))
        ours = network.norm_pre(
            torch.cat(
                (network.cls_token.expand(2, -1, -1), network.patch_embed.proj(images).flatten(2).transpose(1, 2)), 1
            )
            + network.pos_embed
        )
        for block in network.blocks:
            ours = network._block(block, ours)[0]
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------------- training


def test_the_learning_rate_follows_timms_cosine_one_epoch_late():
    run = tiny_run(lr=0.0512, batch_size=64, epochs=10, warmup_epochs=2, warmup_lr=1e-6, min_lr=1e-5)
    peak = 0.0512 * 64 / 512
    assert epoch_lr(0, run) == epoch_lr(1, run) == pytest.approx(1e-6)
    assert epoch_lr(2, run) == pytest.approx(1e-6 + (peak - 1e-6) / 2)
    assert epoch_lr(3, run) == pytest.approx(1e-5 + 0.5 * (peak - 1e-5) * (1 + np.cos(np.pi * 2 / 10)))
    assert epoch_lr(9, run) == pytest.approx(1e-5 + 0.5 * (peak - 1e-5) * (1 + np.cos(np.pi * 8 / 10)))


class Images:
    """Four coloured images, the labels saying which colours they hold."""

    def __init__(self) -> None:
        from PIL import Image

        rng = np.random.default_rng(0)
        self.images = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(4)]
        self.targets = [torch.tensor(t, dtype=torch.float32) for t in ([1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1])]

    def __len__(self) -> int:
        return 4

    def image(self, index: int):
        return self.images[index]

    def target(self, index: int) -> torch.Tensor:
        return self.targets[index]


def _state_bytes(network) -> bytes:
    return b"".join(value.numpy().tobytes() for value in network.state_dict().values())


def test_training_resumes_after_a_kill_to_the_same_weights(tmp_path):
    run = tiny_run()
    network = build_network(run, CLASSES, pretrained=False)
    untrained = _state_bytes(network.network)
    curve = train(
        network.network, Images(), run, mean=network.mean, std=network.std, device="cpu", work_dir=tmp_path / "whole"
    )
    assert [row["iteration"] for row in curve] == list(range(6)) and [row["epoch"] for row in curve][::2] == [0, 1, 2]
    assert all(
        np.isfinite(row["loss"])
        and row["loss"] == pytest.approx(row["token_loss"] + row["coarse_loss"] + row["fine_loss"])
        for row in curve
    )

    def kill_in_epoch_two(update: int) -> None:
        if update == 5:
            raise Killed

    interrupted = build_network(run, CLASSES, pretrained=False)
    with pytest.raises(Killed):
        train(
            interrupted.network,
            Images(),
            run,
            mean=interrupted.mean,
            std=interrupted.std,
            device="cpu",
            work_dir=tmp_path / "resumed",
            on_step=kill_in_epoch_two,
        )
    resumed = build_network(run, CLASSES, pretrained=False)  # a fresh process: initial weights, then the checkpoint
    resumed_curve = train(
        resumed.network, Images(), run, mean=resumed.mean, std=resumed.std, device="cpu", work_dir=tmp_path / "resumed"
    )
    assert _state_bytes(resumed.network) == _state_bytes(network.network) != untrained
    assert resumed_curve == curve


def test_a_batch_larger_than_the_images_is_refused(tmp_path):
    run = tiny_run(batch_size=5)
    built = build_network(run, CLASSES, pretrained=False)
    with pytest.raises(ValueError, match="batch_size 5 is larger than the 4 training images"):
        train(built.network, Images(), run, mean=built.mean, std=built.std, device="cpu", work_dir=tmp_path)


# ----------------------------------------------------------------------------------------------------------- CAMs


def test_cams_are_per_class_min_max_at_image_size_and_mirror_with_the_image():
    built = build_network(tiny_run(), CLASSES, pretrained=False)
    generator = cam_generator(built, {"scales": [1.0, 1.2], "patch_refine": True, "amp": True}, torch.device("cpu"))
    image = np.random.default_rng(1).integers(0, 255, (37, 50, 3), dtype=np.uint8)
    ids, maps = generator(image, [3, 1])
    assert ids == [1, 3] and maps.shape == (2, 37, 50) and maps.dtype == np.float32
    np.testing.assert_allclose(maps.min(axis=(1, 2)), 0.0, atol=1e-6)
    # (max - min) / (max - min + 1e-8), as the reference divides: just below 1 for an untrained net's faint maps
    assert ((maps.max(axis=(1, 2)) > 0.99) & (maps.max(axis=(1, 2)) <= 1.0)).all()
    # every scale runs with its mirror image, flipped back: the CAMs of the mirrored image are the mirrored CAMs
    _, mirrored = generator(np.ascontiguousarray(image[:, ::-1]), [1, 3])
    np.testing.assert_allclose(mirrored, maps[:, :, ::-1], atol=1e-5)
    # without the patch refinement the maps differ (the affinity propagates them)
    plain = cam_generator(built, {"scales": [1.0, 1.2], "patch_refine": False, "amp": True}, torch.device("cpu"))
    assert not np.allclose(plain(image, [1, 3])[1], maps, atol=1e-3)


def test_cams_upsample_the_token_grid_over_the_whole_image():
    """A side that is not a multiple of the patch loses its remainder in the patch embedding, and the grid is then
    stretched over the whole image (the reference's behaviour), at scale 1.0 exactly F.interpolate's."""
    built = build_network(tiny_run(), CLASSES, pretrained=False)
    generator = cam_generator(built, {"scales": [1.0], "patch_refine": True, "amp": True}, torch.device("cpu"))
    image = np.random.default_rng(2).integers(0, 255, (37, 50, 3), dtype=np.uint8)
    _, maps = generator(image, [2])
    views = generator._views(image, 1.0)
    with torch.no_grad():
        grid = built.network.cams(views)
    total = F.interpolate(grid, size=(37, 50), mode="bilinear", align_corners=False)
    total = (total[0] + total[1].flip(-1))[1]
    expected = ((total - total.min()) / (total.max() - total.min() + 1e-8)).numpy()
    np.testing.assert_allclose(maps[0], expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------- stages


def add_weaktr(project: Path) -> None:
    """WeakTr's stages in the project's params, started from the test demo CLIP's tower (one block, two heads, 8-px
    patches at 32 px), as the demo would: cam_net@weaktr, net_cams@weaktr, seeds@weaktr_crf."""
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    backbone = {
        "arch": "vit_base_patch16_clip_224",
        "overrides": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
        "checkpoint": "artifacts/demo_clip/model.safetensors",
    }
    params["cam_nets"]["runs"] = {
        "weaktr": {
            "method": "weaktr",
            "backbone": backbone,
            "epochs": 2,
            "warmup_epochs": 1,
            "batch_size": 2,
            "reduction": 2.0,
            "augment": {"input_size": 32},
        }
    }
    params["cam_nets"]["cams"] = {"weaktr": {"method": "weaktr", "reads": "artifacts/camnet_weaktr"}}
    crf = {"enabled": True, "unary": "labels", "gt_prob": 0.7, "confidence": 0.0}
    params["seeds"]["variants"]["weaktr_crf"] = {
        "cams": "cams_weaktr",
        "background": "threshold",
        "background_value": 0.43,
        "crf": crf,
    }
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_cam_net_and_net_cams_stages_end_to_end_byte_identical(project):
    import shutil

    from wsss_core.audit import read_provenance
    from wsss_core.hashing import sha256_path
    from wsss_core.store import DenseMaps

    add_weaktr(project)
    for stage in ("demo_data", "demo_clip", "prepare"):
        run_ok(stage)
    run_ok("cam_net", "weaktr")
    artifact = Path("artifacts/camnet_weaktr")
    provenance = read_provenance(artifact)
    assert provenance["stage"] == "cam_net" and provenance["details"]["updates"] == 6  # 6 images / 2, 2 epochs
    assert provenance["checkpoints"]["vit"]["path"] == "artifacts/demo_clip/model.safetensors"
    header = Path("metrics/camnet_weaktr/loss.csv").read_text().splitlines()[0]
    assert header == "iteration,loss,token_loss,coarse_loss,fine_loss"
    first = sha256_path(artifact)

    run_ok("net_cams", "weaktr")
    cams = DenseMaps(Path("artifacts/cams_weaktr.zarr"), kind="cams")
    assert len(cams) == 6 and cams.provenance["upstream"]["camnet"]["path"] == str(artifact)
    for index, (_, maps) in enumerate(cams):
        assert maps.shape[1:] == (64, 64) and len(cams.classes(index)) == maps.shape[0]
    run_ok("seeds", "weaktr_crf")

    shutil.rmtree(artifact)
    run_ok("cam_net", "weaktr")
    assert sha256_path(artifact) == first  # the same inputs give the same bytes


def test_net_cams_refuses_an_artifact_that_is_not_a_cam_network(project):
    import yaml

    from tests.test_stages import invoke

    add_weaktr(project)
    for stage in ("demo_data", "prepare"):
        run_ok(stage)
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["cam_nets"]["cams"]["weaktr"]["reads"] = "artifacts/camnet_index"
    Path("artifacts/camnet_index").mkdir(parents=True)
    index_before = Path("artifacts/index/train.parquet").read_bytes()
    Path("artifacts/camnet_index/provenance.json").write_text('{"stage": "prepare"}')
    Path("artifacts/camnet_index.dvc").write_text("# stands for `dvc import` of a CAM network\n")
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = invoke("net_cams", "weaktr")
    assert result.exit_code == 1
    assert "artifacts/camnet_index: not a CAM network artifact (written by stage 'prepare')" in result.output
    assert not Path("artifacts/cams_weaktr.zarr").exists()
    assert Path("artifacts/index/train.parquet").read_bytes() == index_before


def test_a_batch_larger_than_the_training_split_is_named_by_its_key(project):
    import yaml

    from tests.test_stages import invoke

    add_weaktr(project)
    for stage in ("demo_data", "prepare"):
        run_ok(stage)
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["cam_nets"]["runs"]["weaktr"]["batch_size"] = 7
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = invoke("cam_net", "weaktr")
    assert result.exit_code == 1
    assert "cam_nets.runs.weaktr.batch_size: 7 is larger than the 6 training images" in result.output
    assert not Path("artifacts/camnet_weaktr").exists()
