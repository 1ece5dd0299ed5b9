"""TorchScript archives read as data: OpenAI-style CLIP releases load, and nothing in an archive ever runs.

Only these tests call `torch.jit.load`, on archives they built themselves: as the reference the reader must match, and
to show that the hostile archives here do run code under it.
"""

from __future__ import annotations

import copy
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from tests.test_models_clip import TINY_CFG, random_images
from wsss_core.models.checkpoints import CheckpointError
from wsss_core.models.clip import load_clip, read_clip_state_dict
from wsss_core.models.torchscript_archive import read_torchscript_tensors

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")


def jit_state(path: Path) -> dict[str, torch.Tensor]:
    """The reference: what `torch.jit.load` (which runs the archive's code) gives."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())


def assert_identical(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert list(state) == list(reference)  # same entries, in state_dict order
    for key, value in reference.items():
        assert state[key].dtype == value.dtype, key
        assert state[key].shape == value.shape and torch.equal(state[key], value), key


def rewrite_archive(source: Path, target: Path, replace: dict[str, bytes]) -> None:
    """Copy a zip archive, replacing the records named in `replace` (names relative to its top-level folder)."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as copy_:
        for info in original.infolist():
            relative = info.filename.partition("/")[2]
            copy_.writestr(info.filename, replace.get(relative, original.read(info)))


# ------------------------------------------------------------------------------------------- reading OpenAI's release


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_traced_openai_style_clip_reads_exactly_like_jit_load(tmp_path, dtype):
    # OpenAI's ViT-B-16.pt: a traced CLIP, half precision, with three metadata buffers beside the weights.
    clip = load_clip("tiny", model_cfg=TINY_CFG, random_init=True, device="cpu")
    model = copy.deepcopy(clip.model).to(dtype)
    for name, value in {"input_resolution": 32, "context_length": 77, "vocab_size": 49408}.items():
        model.__dict__.pop(name, None)  # open_clip keeps two of them as plain ints
        model.register_buffer(name, torch.tensor(value))
    traced = torch.jit.trace_module(
        model,
        {"encode_image": (random_images(1).to(dtype),), "encode_text": (torch.zeros(1, 77, dtype=torch.long),)},
        check_trace=False,
    )
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(traced, str(path))

    assert_identical(read_torchscript_tensors(path), jit_state(path))
    state, ref, openai_format = read_clip_state_dict(path)
    assert openai_format and ref.path == str(path)
    assert "input_resolution" not in state and "attn_mask" not in state
    loaded = load_clip(model_cfg=TINY_CFG, checkpoint=path, device="cpu")
    assert loaded.provenance["quick_gelu"] is True
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, model.state_dict()[key].float()), key


class Weights(torch.nn.Module):
    """A scripted module with every kind of attribute: which of them are state-dict entries is the archive's to say."""

    def __init__(self):
        super().__init__()
        self.register_buffer("steps", torch.arange(3))  # a buffer declared before the parameters
        self.scale = torch.nn.Parameter(torch.randn(2, 3).to(torch.bfloat16))
        self.table = torch.ones(4)  # a plain tensor attribute: not state
        self.sizes = torch.jit.Attribute([1, 2], list[int])  # pickled through torch.jit._pickle.build_intlist
        self.head = torch.nn.Linear(3, 2, bias=False)  # bias None: no entry
        self.register_buffer("transposed", torch.randn(3, 5).t())  # a strided view
        self.blocks = torch.nn.ModuleList([torch.nn.LayerNorm(3) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x * self.table[0]) + self.steps.sum() + self.transposed.sum() + len(self.sizes)


def test_state_dict_entries_are_the_declared_parameters_and_buffers(tmp_path):
    path = tmp_path / "weights.pt"
    torch.jit.save(torch.jit.script(Weights()), str(path))
    state = read_torchscript_tensors(path)
    assert_identical(state, jit_state(path))
    assert list(state) == [
        "scale",
        "steps",
        "transposed",
        "head.weight",
        "blocks.0.weight",
        "blocks.0.bias",
        "blocks.1.weight",
        "blocks.1.bias",
    ]
    assert state["transposed"].stride() == (1, 5)


# -------------------------------------------------------------------------------------------------- hostile archives


class WritesOnLoad(torch.nn.Module):
    """A module whose `__setstate__`, run by `torch.jit.load`, creates a file: TorchScript's `torch.from_file` with a
    shared mapping creates and fills it."""

    def __init__(self, marker: str):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))
        self.marker = marker

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.weight, self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        written = torch.from_file(state[1], True, 5, dtype=torch.uint8)
        self.weight = state[0] + written.fill_(33).sum() * 0  # used, so the compiler keeps the call
        self.marker = state[1]
        self.training = state[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class _WritesOnLoadPayload:
    """The same attack from a TorchScript class (not a module) held by an ordinary module."""

    def __init__(self, marker: str):
        self.marker = marker

    def __getstate__(self) -> tuple[str, int]:
        return (self.marker, 0)

    def __setstate__(self, state: tuple[str, int]) -> None:
        written = torch.from_file(state[0], True, 5, dtype=torch.uint8)
        self.marker = state[0] + str(written.fill_(33).sum().item() * 0)


with warnings.catch_warnings():  # torch deprecates TorchScript; scripting the class here must not warn at collection
    warnings.simplefilter("ignore", DeprecationWarning)
    WritesOnLoadPayload = torch.jit.script(_WritesOnLoadPayload)


class HoldsPayload(torch.nn.Module):
    def __init__(self, marker: str):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))
        self.payload = WritesOnLoadPayload(marker)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


@pytest.mark.parametrize("hostile", [WritesOnLoad, HoldsPayload])
def test_archive_code_never_runs_on_load(tmp_path, hostile):
    marker = tmp_path / "written-by-the-archive"
    path = tmp_path / "ViT-B-16.pt"
    torch.jit.save(torch.jit.script(hostile(str(marker))), str(path))

    with pytest.raises(CheckpointError) as error:
        load_clip(model_cfg=TINY_CFG, checkpoint=path, device="cpu")
    assert not marker.exists()
    assert str(path) in str(error.value)
    if hostile is WritesOnLoad:  # refused while reading: its state means what its own code says
        assert "__setstate__" in str(error.value)
    else:  # the payload stays inert data; the weights read do not fit CLIP
        assert "does not fit" in str(error.value)
        assert list(read_clip_state_dict(path)[0]) == ["weight"]
        assert not marker.exists()

    # the danger is real: torch.jit.load, which read_clip_state_dict used before, runs the archive's code
    jit_state(path)
    assert marker.read_bytes() == b"!" * 5


class RunsCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])  # GLOBAL and STACK_GLOBAL opcodes
def test_a_global_outside_the_allowlist_is_refused_by_name(tmp_path, protocol):
    source, path = tmp_path / "weights.pt", tmp_path / "hostile.pt"
    marker = tmp_path / "command-ran"
    torch.jit.save(torch.jit.script(Weights()), str(source))
    rewrite_archive(source, path, {"data.pkl": pickle.dumps(RunsCommand(marker), protocol=protocol)})

    with pytest.raises(CheckpointError) as error:
        read_clip_state_dict(path)
    assert re.search(r"\b(posix|os|nt)\.system\b", str(error.value))
    assert str(path) in str(error.value)
    assert not marker.exists()


def test_a_storage_shorter_than_its_tensor_is_refused(tmp_path):
    source, path = tmp_path / "weights.pt", tmp_path / "truncated.pt"
    torch.jit.save(torch.jit.script(Weights()), str(source))
    rewrite_archive(source, path, {"data/0": b"\0" * 4})
    with pytest.raises(CheckpointError, match="data/0"):
        read_torchscript_tensors(path)
