"""The checkpoint catalogue and `wsss weights`: what a params file needs, offline verification, safe downloads.

Nothing here reaches the real network: downloads come from a fake opener or an HTTP server on 127.0.0.1, and any
other connection attempt fails the test.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import shutil
import socket
import threading
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import ROOT
from wsss_core import weights
from wsss_core.weights import CHECKPOINTS, FetchError, Required, fetch, required_checkpoints, verify

CONTENT = b"pretend checkpoint\n" * 1000


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    real = socket.create_connection

    def guarded(address, *args, **kwargs):
        if address[0] not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"a test tried to reach {address}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry(url: str = "http://127.0.0.1:9/x.pth", data: bytes = CONTENT, **overrides) -> dict:
    entry = {"what": "test weights", "url": url, "size": len(data), "sha256": _sha(data), "sha256_prefix": None}
    return {**entry, **overrides}


def _params(**changes) -> dict:
    """A params dict in the layout required_checkpoints reads, with everything that needs weights switched on."""
    params = {
        "models": {"clip": {"checkpoint": "checkpoints/ViT-B-16.pt", "sha256": None, "random_init": False}},
        "cams": {"runs": {"caa": {"method": "clip_es"}}},  # a stage that loads the CLIP
        "sam_masks": {
            "runs": {
                "sam_vit_h": {"generator": "sam", "sam": {"checkpoint": "checkpoints/sam_vit_h_4b8939.pth"}},
                "fz": {"generator": "felzenszwalb", "sam": {"checkpoint": "checkpoints/sam_vit_h_4b8939.pth"}},
                "tiny": {"generator": "sam", "sam": {"checkpoint": "checkpoints/x.pth", "random_init": True}},
            }
        },
        "retrain": {
            "runs": {
                "seg": {
                    "network": "deeplabv3plus",
                    "deeplabv3plus": {"checkpoint": "checkpoints/resnet101-63fe2227.pth", "random_init": False},
                    "weaktr": {"checkpoint": "checkpoints/deit_small_patch16_224-cd65a155.pth", "random_init": False},
                }
            }
        },
    }
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = params
        for part in parents:
            node = node[part]
        node[last] = value
    return params


# --- the catalogue ---


def test_catalogue_entries_are_consistent():
    for name, entry in CHECKPOINTS.items():
        assert entry["url"].endswith("/" + name), name
        assert entry["what"], name
        assert entry["sha256"] is None or re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]), name
        assert entry["size"] is None or entry["size"] > 1_000_000, name
        # every file is pinned by something: a full sha256 or at least the prefix its name embeds
        assert entry["sha256"] or entry["sha256_prefix"], name
        if entry["sha256_prefix"]:
            assert f"-{entry['sha256_prefix']}." in name, name
            if entry["sha256"]:
                assert entry["sha256"].startswith(entry["sha256_prefix"]), name


def test_catalogue_pins_the_published_hashes():
    clip = CHECKPOINTS["ViT-B-16.pt"]
    assert clip["sha256"] == clip["url"].split("/")[-2]  # OpenAI's URLs carry the file's sha256
    assert CHECKPOINTS["sam_vit_h_4b8939.pth"]["sha256"].startswith("a7bf3b02f3ebf1267aba913ff637d9a2")
    for name in ("sam_vit_h_4b8939.pth", "sam_vit_l_0b3195.pth", "sam_vit_b_01ec64.pth"):
        assert CHECKPOINTS[name]["url"] == f"https://dl.fbaipublicfiles.com/segment_anything/{name}"
        assert CHECKPOINTS[name]["size"] is not None
    assert CHECKPOINTS["deit_small_patch16_224-cd65a155.pth"]["sha256"] is None  # not pinned: prefix only


# --- what a params file needs ---


def test_required_checkpoints_reads_each_section():
    required = required_checkpoints(_params())
    assert [(r.key, str(r.path)) for r in required] == [
        ("models.clip.checkpoint", "checkpoints/ViT-B-16.pt"),
        ("sam_masks.runs.sam_vit_h.sam.checkpoint", "checkpoints/sam_vit_h_4b8939.pth"),
        ("retrain.runs.seg.deeplabv3plus.checkpoint", "checkpoints/resnet101-63fe2227.pth"),
    ]
    assert [r.entry for r in required] == [
        CHECKPOINTS["ViT-B-16.pt"],
        CHECKPOINTS["sam_vit_h_4b8939.pth"],
        CHECKPOINTS["resnet101-63fe2227.pth"],
    ]


def test_required_checkpoints_skips_random_init_and_unused_networks():
    random_backbone = _params(retrain__runs__seg__deeplabv3plus__random_init=True)
    assert required_checkpoints(random_backbone)[-1].key.startswith("sam_masks")
    keys = [r.key for r in required_checkpoints(_params(retrain__runs__seg__network="weaktr"))]
    assert keys[-1] == "retrain.runs.seg.weaktr.checkpoint"
    keys = [r.key for r in required_checkpoints(_params(retrain__runs__seg__network="weclip_head", models__clip={}))]
    assert keys == ["sam_masks.runs.sam_vit_h.sam.checkpoint"]


def test_pipeline_outputs_and_custom_files_are_not_catalogue_entries():
    demo = {"checkpoint": "artifacts/demo_clip/model.safetensors", "random_init": False}
    custom = {"checkpoint": "weights/my_resnet.pth", "random_init": False, "sha256": "ab" * 32}
    required = required_checkpoints(_params(models__clip=demo, retrain__runs__seg__deeplabv3plus=custom))
    clip, retrain = required[0], required[-1]
    assert clip.entry is None and clip.made_by_pipeline
    assert retrain.entry is None and not retrain.made_by_pipeline
    assert retrain.pinned_sha256 == "ab" * 32


# --- verify ---


def test_verify_reports_missing_files_with_key_and_url(tmp_path):
    required = [
        Required(
            "sam_masks.runs.h.sam.checkpoint", tmp_path / "sam_vit_h_4b8939.pth", CHECKPOINTS["sam_vit_h_4b8939.pth"]
        ),
        Required("models.clip.checkpoint", Path("artifacts/demo_clip/model.safetensors"), None),  # a stage makes it
        Required("retrain.runs.seg.weaktr.checkpoint", tmp_path / "mine.pth", None),
    ]
    problems = verify(required)
    assert [(p.key, p.kind) for p in problems] == [
        ("sam_masks.runs.h.sam.checkpoint", "missing"),
        ("retrain.runs.seg.weaktr.checkpoint", "missing"),
    ]
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth" in problems[0].message
    assert "not in the weights catalogue" in problems[1].message


def test_verify_accepts_the_right_file_and_names_both_hashes_of_a_changed_byte(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(CONTENT)
    item = Required("models.clip.checkpoint", path, _entry())
    assert verify([item]) == []

    changed = bytearray(CONTENT)
    changed[500] ^= 1
    path.write_bytes(bytes(changed))
    (problem,) = verify([item])
    assert problem.kind == "sha256"
    assert _sha(CONTENT) in problem.message and _sha(bytes(changed)) in problem.message
    assert "models.clip.checkpoint" in problem.message


def test_verify_reports_a_truncated_file_by_size(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(CONTENT[:-10])
    (problem,) = verify([Required("k.checkpoint", path, _entry())])
    assert problem.kind == "size"
    assert f"{len(CONTENT) - 10} bytes, expected {len(CONTENT)}" in problem.message


def test_verify_checks_only_the_prefix_when_the_full_hash_is_not_pinned(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(CONTENT)
    right = Required("k.checkpoint", path, _entry(sha256=None, size=None, sha256_prefix=_sha(CONTENT)[:8]))
    assert verify([right]) == []
    assert "prefix" in weights.pin_note(right) and "size not pinned" in weights.pin_note(right)
    wrong = Required("k.checkpoint", path, _entry(sha256=None, size=None, sha256_prefix="00000000"))
    (problem,) = verify([wrong])
    assert problem.kind == "sha256" and "full sha256 is not pinned" in problem.message


def test_verify_checks_the_params_pin_of_a_custom_file_and_hashes_a_shared_file_once(tmp_path, monkeypatch):
    path = tmp_path / "mine.pth"
    path.write_bytes(CONTENT)
    calls = []
    monkeypatch.setattr(weights, "sha256_file", lambda p: calls.append(p) or _sha(Path(p).read_bytes()))
    good = Required("a.checkpoint", path, None, pinned_sha256=_sha(CONTENT))
    bad = Required("b.checkpoint", path, None, pinned_sha256="f" * 64)
    (problem,) = verify([good, bad])
    assert problem.key == "b.checkpoint" and "b.sha256" in problem.message
    assert calls == [path]


# --- fetch ---


class _Server:
    """Serves `files` (URL path -> bytes) on 127.0.0.1 and counts the requests."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    big = bytes(range(256)) * (3 * 4096 + 7)  # over 3 MiB: several download blocks
    serving = _Server({"/w/big.pth": big, "/w/other.pth": CONTENT})
    serving.big = big
    yield serving
    serving.close()


def test_fetch_downloads_over_http_and_leaves_no_partial(tmp_path, server):
    target = tmp_path / "checkpoints" / "big.pth"
    item = Required("k.checkpoint", target, _entry(f"{server.url}/w/big.pth", server.big))
    assert fetch([item]) == [target]
    assert target.read_bytes() == server.big
    assert sorted(p.name for p in target.parent.iterdir()) == ["big.pth"]
    assert verify([item]) == []


def test_fetch_rejects_a_mismatch_naming_url_and_both_hashes(tmp_path, server):
    target = tmp_path / "big.pth"
    url = f"{server.url}/w/other.pth"  # serves other bytes than the entry pins
    item = Required("k.checkpoint", target, _entry(url, server.big, size=None))
    with pytest.raises(FetchError) as raised:
        fetch([item])
    assert url in str(raised.value)
    assert _sha(server.big) in str(raised.value) and _sha(CONTENT) in str(raised.value)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a .partial


def test_fetch_never_overwrites_an_existing_file(tmp_path):
    target = tmp_path / "w.pth"
    target.write_bytes(b"a wrong but existing file")

    def opener(url):
        raise AssertionError("an existing file must not be downloaded again")

    assert fetch([Required("k.checkpoint", target, _entry())], opener=opener) == []
    assert target.read_bytes() == b"a wrong but existing file"


def test_fetch_removes_the_partial_of_an_interrupted_download(tmp_path):
    class Broken(io.BytesIO):
        def read(self, size=-1):
            if self.tell() > 0:
                raise ConnectionResetError("connection dropped")
            return super().read(100)

    target = tmp_path / "w.pth"
    with pytest.raises(ConnectionResetError):
        fetch([Required("k.checkpoint", target, _entry())], opener=lambda url: Broken(CONTENT))
    assert list(tmp_path.iterdir()) == []


def test_fetch_downloads_a_shared_file_once_and_skips_files_it_cannot_get(tmp_path):
    urls = []

    def opener(url):
        urls.append(url)
        return io.BytesIO(CONTENT)

    shared = tmp_path / "w.pth"
    required = [
        Required("a.checkpoint", shared, _entry()),
        Required("b.checkpoint", shared, _entry()),
        Required("c.checkpoint", Path("artifacts/demo_clip/model.safetensors"), None),
        Required("d.checkpoint", tmp_path / "mine.pth", None),
    ]
    assert fetch(required, opener=opener) == [shared]
    assert urls == ["http://127.0.0.1:9/x.pth"]
    assert not (tmp_path / "mine.pth").exists()


def test_fetch_accepts_a_prefix_pinned_download(tmp_path):
    entry = _entry(sha256=None, size=None, sha256_prefix=_sha(CONTENT)[:8])
    target = tmp_path / "w.pth"
    assert fetch([Required("k.checkpoint", target, entry)], opener=lambda url: io.BytesIO(CONTENT)) == [target]
    bad = _entry(sha256=None, size=None, sha256_prefix="00000000")
    with pytest.raises(FetchError, match="00000000"):
        fetch([Required("k.checkpoint", tmp_path / "v.pth", bad)], opener=lambda url: io.BytesIO(CONTENT))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pth"]


# --- the `wsss weights` commands ---


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory whose params (loaded through the `_load` seam) need a catalogue file and the demo CLIP."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(CHECKPOINTS, "w.pth", _entry())
    params = _params(
        models__clip={"checkpoint": "artifacts/demo_clip/model.safetensors", "random_init": False},
        retrain__runs__seg__deeplabv3plus={"checkpoint": "checkpoints/w.pth", "random_init": False},
    )
    params["sam_masks"]["runs"] = {"vit_h": {"generator": "sam", "sam": {"checkpoint": "sam_vit_h_4b8939.pth"}}}
    loaded = []
    monkeypatch.setattr(weights, "_load", lambda path: loaded.append(path) or params)
    (tmp_path / "params.yaml").write_text("# loaded through the monkeypatched _load\n")
    return types.SimpleNamespace(root=tmp_path, params=params, loaded=loaded)


def test_cli_verify_names_every_missing_file_and_fails(project):
    result = CliRunner().invoke(weights.weights_app, ["verify", "params.yaml"])
    assert result.exit_code == 1
    assert "retrain.runs.seg.deeplabv3plus.checkpoint: checkpoints/w.pth is missing" in result.output
    assert "sam_masks.runs.vit_h.sam.checkpoint: sam_vit_h_4b8939.pth is missing" in result.output
    assert CHECKPOINTS["sam_vit_h_4b8939.pth"]["url"] in result.output
    assert "models.clip.checkpoint: artifacts/demo_clip/model.safetensors: made by the pipeline" in result.output
    assert project.loaded == [Path("params.yaml")]


def test_cli_verify_passes_when_files_match(project):
    project.params["sam_masks"]["runs"] = {}
    (project.root / "checkpoints").mkdir()
    (project.root / "checkpoints" / "w.pth").write_bytes(CONTENT)
    result = CliRunner().invoke(weights.weights_app, ["verify"])
    assert result.exit_code == 0, result.output
    assert "retrain.runs.seg.deeplabv3plus.checkpoint: checkpoints/w.pth: ok (sha256, size)" in result.output


def test_cli_list_shows_a_table_per_file(project):
    (project.root / "checkpoints").mkdir()
    (project.root / "checkpoints" / "w.pth").write_bytes(b"x")
    result = CliRunner().invoke(weights.weights_app, ["list", "params.yaml", "other.yaml"])
    assert result.exit_code == 0, result.output
    assert result.output.count("params key") == 2 and "other.yaml:" in result.output
    lines = result.output.splitlines()
    sam = next(line for line in lines if "sam_masks.runs.vit_h" in line)
    assert "2.39 GiB" in sam and "a7bf3b02f3eb..." in sam and sam.endswith("missing")
    assert next(line for line in lines if "models.clip" in line).endswith("made by the pipeline")
    assert next(line for line in lines if "retrain.runs.seg.deeplabv3plus" in line).endswith("present")


def test_cli_fetch_downloads_from_the_catalogue_url(project, server):
    project.params["sam_masks"]["runs"] = {}
    CHECKPOINTS["w.pth"] = _entry(f"{server.url}/w/big.pth", server.big)  # undone by monkeypatch.setitem
    result = CliRunner().invoke(weights.weights_app, ["fetch"])
    assert result.exit_code == 0, result.output
    assert (project.root / "checkpoints" / "w.pth").read_bytes() == server.big
    assert server.requests == ["/w/big.pth"]


@pytest.mark.parametrize("preset", sorted(path.stem for path in (ROOT / "presets").glob("*.yaml")))
def test_every_preset_names_official_files_of_the_catalogue(preset):
    required = weights.required_checkpoints(weights._load(ROOT / "presets" / f"{preset}.yaml"))
    names = {item.path.name for item in required}
    if preset.startswith("weaktr"):  # no CLIP: DeiT-S starts both the CAM network and the segmenter
        assert [item.key for item in required] == [
            "cam_nets.runs.weaktr.backbone.checkpoint",
            "retrain.runs.weaktr.weaktr.checkpoint",
        ]
        assert names == {"deit_small_patch16_224-cd65a155.pth"}
        return
    expected = {"ViT-B-16.pt"} | ({"sam_vit_h_4b8939.pth", "resnet101-63fe2227.pth"} if "fma" in preset else set())
    if preset.startswith("diclip"):  # its cache's two Stable Diffusion pipelines
        expected |= {"stable-diffusion-v1-5", "stable-diffusion-2-1-base"}
    assert names == expected
    catalogue = weights.CHECKPOINTS | weights.PIPELINES
    assert all(item.entry is catalogue[item.path.name] for item in required)
    clip = next(item for item in required if item.key == "models.clip.checkpoint")
    assert clip.pinned_sha256 == weights.CHECKPOINTS["ViT-B-16.pt"]["sha256"]  # the preset pins the official hash


# --- Stable Diffusion pipelines (diffusers directories) ---


def _pipeline(folder: Path, components=("unet", "vae", "text_encoder")) -> Path:
    """A directory in diffusers' layout with placeholder weight files (verify checks the layout, not the weights)."""
    index = {"_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "PNDMScheduler"]}
    for component in ("unet", "vae", "text_encoder"):
        index[component] = ["diffusers", "X"]
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps(index))
    for component in components:
        (folder / component).mkdir()
        (folder / component / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    return folder


def _sd_required(path: Path) -> Required:
    return Required("sd_cache.runs.voc.diffusion", path, weights.PIPELINES["stable-diffusion-2-1-base"])


def test_verify_checks_a_pipeline_directory_layout(tmp_path):
    missing = verify([_sd_required(tmp_path / "stable-diffusion-2-1-base")])
    assert [p.kind for p in missing] == ["missing"]
    assert "huggingface-cli download stabilityai/stable-diffusion-2-1-base --local-dir" in missing[0].message
    partial = _pipeline(tmp_path / "partial" / "stable-diffusion-2-1-base", components=("unet", "vae"))
    (problem,) = verify([_sd_required(partial)])
    assert problem.kind == "layout" and "no weight files for text_encoder" in problem.message
    assert verify([_sd_required(_pipeline(tmp_path / "full" / "stable-diffusion-2-1-base"))]) == []


def test_fetch_downloads_a_pipeline_through_a_partial_directory(tmp_path):
    calls = []

    def snapshot(**arguments):  # stands for huggingface_hub.snapshot_download: no network in tests
        calls.append(arguments)
        shutil.rmtree(arguments["local_dir"], ignore_errors=True)
        _pipeline(Path(arguments["local_dir"]))

    target = tmp_path / "checkpoints" / "stable-diffusion-2-1-base"
    target.parent.mkdir()
    assert fetch([_sd_required(target)], snapshot=snapshot) == [target]
    assert verify([_sd_required(target)]) == [] and not target.with_name(target.name + ".partial").exists()
    assert calls[0]["repo_id"] == "stabilityai/stable-diffusion-2-1-base"
    assert "safety_checker/*" in calls[0]["ignore_patterns"]

    def incomplete(**arguments):
        _pipeline(Path(arguments["local_dir"]), components=("unet",))

    other = tmp_path / "checkpoints" / "stable-diffusion-v1-5"
    item = Required("sd_cache.runs.voc.generator", other, weights.PIPELINES["stable-diffusion-v1-5"])
    with pytest.raises(FetchError, match="incomplete .*no weight files for vae, text_encoder"):
        fetch([item], snapshot=incomplete)
    assert not other.exists() and not other.with_name(other.name + ".partial").exists()
