"""Pretrained checkpoints: which files a params file needs, whether the copies on disk are the published ones, and
how to download the missing ones (`wsss weights list | verify | fetch`).

Checkpoints are the one input of a run that DVC does not track, so a truncated download or a file swapped for another
checkpoint of the same name would silently change every result. Each catalogue entry therefore pins the exact size and
sha256 where a public source states them; where none was found the value is None ("not pinned") and only what is
known is checked, e.g. the sha256 prefix that torch.hub-style file names (`name-<first 8 hex of sha256>.pth`) embed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from wsss_core.hashing import sha256_file

# Official file name -> what it is, where it is published, exact size in bytes, full sha256, and the sha256 prefix the
# file name embeds (torch.hub convention; None where the name's suffix is not a hash prefix, as for SAM's files).
CHECKPOINTS: dict[str, dict[str, Any]] = {
    "ViT-B-16.pt": {
        "what": "OpenAI CLIP ViT-B/16 (image and text encoder, TorchScript archive)",
        "url": "https://openaipublic.azureedge.net/clip/models/"
        "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
        # sha256: the URL's directory, which openai/CLIP clip/clip.py `_download` checks the file against.
        "sha256": "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
        # size: stated with this sha256 in several independent public download manifests (e.g. a CLIP-cache
        # verification note "size_bytes=350837078"); matches the 334.58 MiB another repository lists for the file.
        "size": 350_837_078,
        "sha256_prefix": None,
    },
    "sam_vit_h_4b8939.pth": {
        "what": "Segment Anything ViT-H (FMA-WSSS, SAMS, CLIP-ES + SAM)",
        "url": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        # sha256: micro-sam micro_sam/util.py `_CHECKSUMS["vit_h"]`, and many download scripts that verify it.
        "sha256": "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        # size: public model manifests that list it next to the sha256 above (Fooocus-style model lists, SAM
        # checkpoint tables: 2,564,550,879 bytes).
        "size": 2_564_550_879,
        "sha256_prefix": None,
    },
    "sam_vit_l_0b3195.pth": {
        "what": "Segment Anything ViT-L",
        "url": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        # sha256: micro-sam micro_sam/util.py `_CHECKSUMS["vit_l"]`.
        "sha256": "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        # size: public manifests listing it with the sha256 above (a PowerShell installer pins Size=1249524607 and
        # this sha256); one unrelated script's 1249524736 is contradicted by all the others.
        "size": 1_249_524_607,
        "sha256_prefix": None,
    },
    "sam_vit_b_01ec64.pth": {
        "what": "Segment Anything ViT-B",
        "url": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        # sha256: micro-sam micro_sam/util.py `_CHECKSUMS["vit_b"]`.
        "sha256": "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        # size: manifests pairing it with the sha256 above, and a wget log of this URL ("Length: 375042383").
        "size": 375_042_383,
        "sha256_prefix": None,
    },
    "resnet101-63fe2227.pth": {
        "what": "torchvision ResNet-101 ImageNet-1k (IMAGENET1K_V1), the DeepLabV3+ backbone",
        "url": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
        # sha256: stated in full by two unrelated public projects (a checkpoint registry and a PyTorch-to-Keras
        # ResNet conversion script); it starts with the 63fe2227 the file name embeds.
        "sha256": "63fe2227b86e8f1f2063f43a75c84d195911b6a0eace650907dd3dc62dd49a0a",
        "size": None,  # not pinned: torchvision's docs give only a rounded MB figure
        "sha256_prefix": "63fe2227",
    },
    "deit_small_patch16_224-cd65a155.pth": {
        "what": "DeiT-S/16 ImageNet-1k (Facebook DeiT release), the WeakTr encoder",
        "url": "https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth",
        # Not pinned: no public source found stating the full sha256 or the size. facebookresearch/deit loads this URL
        # with torch.hub `check_hash=True`, so the name's cd65a155 is the sha256 prefix; that much is checked.
        "sha256": None,
        "size": None,
        "sha256_prefix": "cd65a155",
    },
    # Stable Diffusion 2.1 base is not listed: no exact size and sha256 of its files were found in a public source.
}

_BLOCK = 1 << 20  # download in 1 MiB blocks: checkpoints are up to a few GB


class FetchError(RuntimeError):
    """A download did not match its pinned size or sha256, or cannot be placed without overwriting a file."""


# Diffusers pipeline directories (Hugging Face repositories) -> what they are and where they are published. They are
# not pinned by hash (a repository's files change with its revisions): `verify` checks the layout (model_index.json
# and the weight files of the components a Stable Diffusion pipeline loads), and the stages record every weight file's
# sha256 in their artifacts' provenance. `fetch` downloads those files only (no single-file checkpoints, no fp16
# copies, no safety checker, which the stages never load).
def _pipeline(what: str, repo: str) -> dict[str, Any]:
    """A PIPELINES entry: a catalogue entry without pins, plus the repository `fetch` downloads."""
    return {"what": what, "repo": repo, "url": f"https://huggingface.co/{repo}", "sha256": None, "size": None,
            "sha256_prefix": None}  # fmt: skip


PIPELINES: dict[str, dict[str, Any]] = {
    "stable-diffusion-2-1-base": _pipeline(
        "Stable Diffusion 2.1 base, diffusers layout (DiCLIP's VCE attention)", "stabilityai/stable-diffusion-2-1-base"
    ),
    # runwayml/stable-diffusion-v1-5 was withdrawn in 2024; this is the copy its maintainers point to
    "stable-diffusion-v1-5": _pipeline(
        "Stable Diffusion 1.5, diffusers layout (DiCLIP's code draws its cache with it)",
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
    ),
}
PIPELINE_COMPONENTS = ("unet", "vae", "text_encoder")  # the weights a Stable Diffusion pipeline cannot do without
PIPELINE_FILES = ("model_index.json", "*/*.json", "*/*.txt", "*/diffusion_pytorch_model.safetensors")
PIPELINE_FILES += ("*/model.safetensors",)
PIPELINE_SKIPPED = ("safety_checker/*",)


@dataclass(frozen=True)
class Required:
    """One checkpoint file a params file asks for."""

    key: str  # the params key that names the file, e.g. "sam_masks.runs.sam_vit_h.sam.checkpoint"
    path: Path  # as written in params: relative to the project root (where dvc runs the stages)
    entry: dict[str, Any] | None  # CHECKPOINTS[path.name], or None for a file the catalogue does not know
    pinned_sha256: str | None = None  # the params file's own `sha256` next to the key, when set

    @property
    def made_by_pipeline(self) -> bool:
        """An unknown file under artifacts/ is an output of an earlier stage (e.g. the demo's pretrained CLIP)."""
        return self.entry is None and not self.path.is_absolute() and self.path.parts[:1] == ("artifacts",)

    @property
    def url(self) -> str | None:
        return None if self.entry is None else self.entry["url"]

    @property
    def is_pipeline(self) -> bool:
        """A diffusers pipeline directory (PIPELINES), not a single file."""
        return self.entry is not None and "repo" in self.entry

    @property
    def present(self) -> bool:
        return self.path.is_dir() if self.is_pipeline else self.path.is_file()


@dataclass(frozen=True)
class Problem:
    key: str
    path: Path
    kind: str  # "missing" | "size" | "sha256" | "layout"
    message: str


def _required(key: str, section: Mapping[str, Any]) -> Required | None:
    # A section with random_init true builds random weights and loads no file (the loaders reject a checkpoint
    # given with random_init), so its checkpoint, if any, is not needed.
    checkpoint = section.get("checkpoint")
    if not checkpoint or section.get("random_init", False):
        return None
    path = Path(checkpoint)
    return Required(f"{key}.checkpoint", path, CHECKPOINTS.get(path.name), section.get("sha256"))


def _uses_clip(params: Mapping[str, Any]) -> bool:
    """Whether a stage loads models.clip: every CLIP-based family, a CLIP head, or an adapter's predictions (WeakTr,
    with its CAM network and ViT segmenter, loads none)."""
    from wsss_core.params.pipeline import CLIP_NETWORKS

    if any(params.get(family, {}).get("runs") for family in ("describe", "learn", "adapt", "cams")):
        return True
    retrain = params.get("retrain", {})
    if any(run.get("network") in CLIP_NETWORKS for run in retrain.get("runs", {}).values()):
        return True
    variants = retrain.get("predict", {}).get("variants", {}).values()
    return any(variant.get("segmenter", "").startswith("artifacts/adapter_") for variant in variants)


def required_checkpoints(params: Mapping[str, Any]) -> list[Required]:
    """The checkpoint files a validated params dict makes the pipeline load, in pipeline order."""
    found = []
    if _uses_clip(params):
        found.append(_required("models.clip", params.get("models", {}).get("clip", {})))
    for name, run in params.get("sam_masks", {}).get("runs", {}).items():
        if run.get("generator") == "sam":  # felzenszwalb runs need no weights, whatever sam.checkpoint says
            found.append(_required(f"sam_masks.runs.{name}.sam", run.get("sam", {})))
    for name, run in params.get("cam_nets", {}).get("runs", {}).items():
        found.append(_required(f"cam_nets.runs.{name}.backbone", run.get("backbone", {})))
    for name, run in params.get("retrain", {}).get("runs", {}).items():
        network = run.get("network")
        if network in ("deeplabv3plus", "weaktr"):  # weclip_head reuses the CLIP above
            found.append(_required(f"retrain.runs.{name}.{network}", run.get(network, {})))
    for name, run in params.get("sd_cache", {}).get("runs", {}).items():
        for role in ("generator", "diffusion"):
            path = Path(run[role])
            found.append(Required(f"sd_cache.runs.{name}.{role}", path, PIPELINES.get(path.name)))
    return [item for item in found if item is not None]


def _hash_pins(item: Required) -> list[tuple[str, str]]:
    """(where it comes from, expected hex) for every sha256 or sha256 prefix known for the file."""
    pins = []
    if item.entry is not None and item.entry["sha256"]:
        pins.append(("catalogue", item.entry["sha256"]))
    elif item.entry is not None and item.entry["sha256_prefix"]:
        pins.append(("the file name's prefix; the full sha256 is not pinned", item.entry["sha256_prefix"]))
    if item.pinned_sha256:
        pins.append((item.key.rsplit(".", 1)[0] + ".sha256", item.pinned_sha256.lower()))
    return pins


def pin_note(item: Required) -> str:
    """What `verify` can check for this file, in words."""
    size = item.entry is not None and item.entry["size"] is not None
    pins = _hash_pins(item)
    if not pins and not size:
        return "not pinned: only its presence is checked"
    if any(len(pin) == 64 for _, pin in pins):
        sha = "sha256"
    elif pins:
        sha = f"sha256 prefix {pins[0][1]} only"
    else:
        sha = "no sha256"
    return f"{sha}, {'size' if size else 'size not pinned'}"


def _where_to_get(item: Required) -> str:
    if item.is_pipeline:
        return (
            f"download it with `huggingface-cli download {item.entry['repo']} --local-dir {item.path}` "
            "(or run `wsss weights fetch`)"
        )
    if item.url:
        return f"download it from {item.url} (or run `wsss weights fetch`)"
    return "it is not in the weights catalogue: provide the file yourself"


def verify(required: Iterable[Required]) -> list[Problem]:
    """Offline check of every required file: present, of the pinned size, with the pinned sha256 (or prefix).

    Files made by the pipeline are not reported missing (an earlier stage writes them). A file of the wrong size is
    not hashed: hashing GBs only to confirm a truncated download is wasted time.
    """
    problems: list[Problem] = []
    hashes: dict[Path, str] = {}  # a file several keys name is hashed once
    for item in required:
        if item.is_pipeline or item.path.is_dir():
            problems += _verify_pipeline(item)
            continue
        if not item.path.is_file():
            if not item.made_by_pipeline:
                message = f"{item.key}: {item.path} is missing; {_where_to_get(item)}"
                problems.append(Problem(item.key, item.path, "missing", message))
            continue
        expected_size = None if item.entry is None else item.entry["size"]
        actual_size = item.path.stat().st_size
        if expected_size is not None and actual_size != expected_size:
            message = (
                f"{item.key}: {item.path} has {actual_size} bytes, expected {expected_size} "
                f"(an interrupted download?); {_where_to_get(item)}"
            )
            problems.append(Problem(item.key, item.path, "size", message))
            continue
        pins = _hash_pins(item)
        if not pins:
            continue
        if item.path not in hashes:
            hashes[item.path] = sha256_file(item.path)
        actual = hashes[item.path]
        for source, pin in pins:
            if not actual.startswith(pin):
                message = f"{item.key}: {item.path} has sha256 {actual}, expected {pin} ({source})"
                problems.append(Problem(item.key, item.path, "sha256", message))
    return problems


def _verify_pipeline(item: Required) -> list[Problem]:
    """A diffusers pipeline directory: present, with model_index.json and the weights of its essential components."""
    from wsss_core.models.diffusion import pipeline_weight_files

    if not item.path.is_dir():
        return [Problem(item.key, item.path, "missing", f"{item.key}: {item.path} is missing; {_where_to_get(item)}")]
    if not (item.path / "model_index.json").is_file():
        message = f"{item.key}: {item.path} is not a diffusers pipeline directory (no model_index.json)"
        return [Problem(item.key, item.path, "layout", message)]
    files = pipeline_weight_files(item.path)
    empty = [component for component in PIPELINE_COMPONENTS if not files.get(component)]
    if empty:
        message = f"{item.key}: {item.path} has no weight files for {', '.join(empty)} (an interrupted download?)"
        return [Problem(item.key, item.path, "layout", message)]
    return []


def _download_pipeline(item: Required, snapshot: Callable[..., Any]) -> None:
    """Download a pipeline's files into NAME.partial beside its target, then move it into place once its layout is
    complete, so an interrupted download never sits under the real name."""
    partial = item.path.with_name(item.path.name + ".partial")
    try:
        snapshot(
            repo_id=item.entry["repo"],
            local_dir=str(partial),
            allow_patterns=list(PIPELINE_FILES),
            ignore_patterns=list(PIPELINE_SKIPPED),
        )
        problems = _verify_pipeline(Required(item.key, partial, item.entry))
        if problems:
            raise FetchError(f"{item.url}: the download is incomplete ({problems[0].message}); nothing was kept")
        if item.path.exists():
            raise FetchError(f"{item.path}: appeared during the download; left as it is")
        os.replace(partial, item.path)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _hub_snapshot(**arguments: Any) -> Any:
    from huggingface_hub import snapshot_download

    return snapshot_download(**arguments)


def _download(item: Required, opener: Callable[[str], Any]) -> None:
    """Stream the file to NAME.partial beside its target and move it into place only once its size and sha256
    match, so an interrupted or corrupted download never sits under the real name."""
    url = item.url
    assert url is not None
    item.path.parent.mkdir(parents=True, exist_ok=True)
    partial = item.path.with_name(item.path.name + ".partial")
    digest, size = hashlib.sha256(), 0
    try:
        with opener(url) as response, open(partial, "wb") as out:
            while block := response.read(_BLOCK):
                digest.update(block)
                out.write(block)
                size += len(block)
        actual = digest.hexdigest()
        for source, pin in _hash_pins(item):
            if not actual.startswith(pin):
                raise FetchError(f"{url}: downloaded sha256 {actual}, expected {pin} ({source}); nothing was kept")
        expected_size = item.entry["size"] if item.entry else None
        if expected_size is not None and size != expected_size:
            raise FetchError(f"{url}: got {size} bytes (sha256 {actual}), expected {expected_size}; nothing was kept")
        if item.path.exists():  # something appeared there while we downloaded: never replace a file
            raise FetchError(f"{item.path}: appeared during the download; left as it is")
        os.replace(partial, item.path)
    finally:
        partial.unlink(missing_ok=True)


def fetch(
    required: Iterable[Required],
    opener: Callable[[str], Any] = urllib.request.urlopen,
    report: Callable[[str], None] = lambda message: None,
    snapshot: Callable[..., Any] = _hub_snapshot,
) -> list[Path]:
    """Download every missing catalogue file to its configured path; return the paths downloaded.

    Existing files are never overwritten, even wrong ones (`verify` reports those; delete one to fetch it again).
    Unknown files are skipped: there is nothing to download them from. A download that does not match its pins
    raises FetchError naming the url and both hashes, and leaves nothing behind.
    """
    fetched: list[Path] = []
    for item in required:
        if item.entry is None or item.path.exists():  # also skips a file an earlier key of this call fetched
            continue
        report(f"{item.key}: downloading {item.url} -> {item.path}")
        if item.is_pipeline:
            _download_pipeline(item, snapshot)
        else:
            _download(item, opener)
        fetched.append(item.path)
    return fetched


# --- `wsss weights`: registered in wsss_core/cli.py ---

weights_app = typer.Typer(no_args_is_help=True, help="Pretrained checkpoints a params file needs: list, verify, fetch.")

_PARAMS_HELP = "a params file (validated with load_params) or a file under presets/ (applied with apply_preset)"


def _load(path: Path) -> dict[str, Any]:
    """The validated params of a params file or of a preset (a partial params file: defaults fill the rest)."""
    from wsss_core.params import load_params

    return load_params(path)


def _required_of(path: Path) -> list[Required]:
    try:
        return required_checkpoints(_load(path))
    except ValueError as error:  # wsss_core.params.ParamsError: a missing or invalid params file
        print(f"error: {error}", file=sys.stderr)
        raise typer.Exit(code=1) from None


def _status(item: Required) -> str:
    if item.present:
        return "present"
    return "made by the pipeline" if item.made_by_pipeline else "missing"


def _size_text(item: Required) -> str:
    size = None if item.entry is None else item.entry["size"]
    return "-" if size is None else f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def _sha_text(item: Required) -> str:
    pins = _hash_pins(item)
    if not pins:
        return "not pinned"
    pin = pins[0][1]
    return f"{pin[:12]}..." if len(pin) == 64 else f"{pin} (prefix)"


@weights_app.command("list")
def list_command(
    paths: list[Path] | None = typer.Argument(None, help=f"{_PARAMS_HELP}; default params.yaml"),
) -> None:
    """Print, per params or preset file, the checkpoints it needs: key, file, size, sha256, present or missing."""
    for index, path in enumerate(paths or [Path("params.yaml")]):
        required = _required_of(path)
        if index:
            print()
        print(f"{path}:")
        if not required:
            print("  no checkpoint files needed")
            continue
        rows = [("params key", "file", "size", "sha256", "status")]
        rows += [(r.key, str(r.path), _size_text(r), _sha_text(r), _status(r)) for r in required]
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        for row in rows:  # the last column is not padded, so lines carry no trailing blanks
            cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
            print("  " + "  ".join([*cells, row[-1]]))


@weights_app.command("verify")
def verify_command(path: Path = typer.Argument(Path("params.yaml"), help=_PARAMS_HELP)) -> None:
    """Check every needed checkpoint offline: present, exact size, sha256. Exit 1 naming each missing or wrong file."""
    required = _required_of(path)
    problems = verify(required)
    bad = {problem.key for problem in problems}
    for item in required:
        if item.key not in bad:
            what = "made by the pipeline, not built yet" if not item.path.is_file() else f"ok ({pin_note(item)})"
            print(f"{item.key}: {item.path}: {what}")
    for problem in problems:
        print(f"error: {problem.message}", file=sys.stderr)
    if problems:
        raise typer.Exit(code=1)


@weights_app.command("fetch")
def fetch_command(path: Path = typer.Argument(Path("params.yaml"), help=_PARAMS_HELP)) -> None:
    """Download the missing catalogue checkpoints a params file needs into their configured paths.

    Existing files are left untouched. Exit 1 if a needed file cannot be fetched or a download does not match its
    pinned size or sha256 (nothing of it is kept).
    """
    required = _required_of(path)
    try:
        fetch(required, report=print)
    except (FetchError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise typer.Exit(code=1) from None
    unknown = [item for item in required if not item.path.exists() and item.entry is None and not item.made_by_pipeline]
    for item in unknown:
        print(f"error: {item.key}: {item.path} is missing; {_where_to_get(item)}", file=sys.stderr)
    if unknown:
        raise typer.Exit(code=1)
    print("all needed checkpoints are present (run `wsss weights verify` to check existing files)")
