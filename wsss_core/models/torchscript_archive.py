"""Read the weights of a TorchScript archive as data, without running any of the archive's code.

`torch.jit.load` compiles the archive's code and runs it while loading (a scripted class's `__setstate__`, for
instance), so a "checkpoint" that is a TorchScript archive could do anything on load. OpenAI's CLIP releases are
TorchScript archives, so they are read here instead, from the archive layout torch has written since 1.4
(`torch/csrc/jit/serialization/export_module.cpp`), all under one top-level folder `<archive>/`:

- `data.pkl`: the module tree, pickled. Module objects are `__torch__.*` classes; tensors are
  `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` over persistent ids
  `("storage", torch.<Type>Storage, key, location, numel)`.
- `data/<key>`: the raw bytes of each storage, in the order named by `byteorder` (absent in old archives: little).
- `code/__torch__/<module path>.py`: each class as TorchScript source; a module class declares which attributes are
  parameters and buffers (`__parameters__ = [...]`, `__buffers__ = [...]`). Those lists are read with `ast`
  (parsed as text, never compiled or run): they are what separates state-dict entries from plain tensor attributes.
- `constants.pkl`, `version` / `.data/version`, `*.debug_pkl`: the code's constants and metadata, not weights.

`data.pkl` is unpickled by `_ArchiveUnpickler`, which resolves only the few globals that rebuild tensors and maps
every `__torch__.*` class to an inert stub that records its pickled state; anything else is refused with a
`CheckpointError`. A module class that defines its own `__setstate__` is refused too: only its code could say what
its state means.
"""

from __future__ import annotations

import ast
import io
import math
import pickle
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch

from wsss_core.models.checkpoints import CheckpointError


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of the TorchScript module saved at `path` (dotted names, on the CPU), read without running it.

    Keys, order, dtypes and values are those of `torch.jit.load(path).state_dict()`: every module's parameters and
    buffers as its class declares them (non-persistent buffers included, as TorchScript keeps no such flag), then
    its submodules'. Plain tensor attributes and non-tensor attributes (`training`, ...) are not state. Raises
    `CheckpointError` for anything that is not such an archive or that needs more than data to read.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            reader = _ArchiveReader(path, archive)
            state: dict[str, torch.Tensor] = {}
            reader.collect_state(reader.unpickle_data(), "", state)
            return state
    except CheckpointError:
        raise
    except Exception as error:  # a damaged or hostile file fails in many ways; each means "not readable as data"
        raise CheckpointError(f"TorchScript archive {path}: cannot be read as data ({error})") from error


class _ScriptObject:
    """An object of one of the archive's classes: its class name and its pickled state. No archive code runs."""

    qualified_name: ClassVar[str] = ""

    def __setstate__(self, state: object) -> None:  # what pickle's BUILD calls: keep the state, interpret nothing
        self.state = state


class _StorageClass(NamedTuple):  # what `torch.<Type>Storage` stands for in a persistent id: just its dtype
    dtype: torch.dtype


class _Storage(NamedTuple):
    dtype: torch.dtype
    data: torch.UntypedStorage


class _ModuleClass(NamedTuple):
    parameters: tuple[str, ...]
    buffers: tuple[str, ...]
    has_setstate: bool


_STORAGE_CLASSES = {name: _StorageClass(dtype) for dtype, name in torch.storage._dtype_to_storage_type_map().items()}


def _rebuild_tensor(
    storage: _Storage, offset: int, size: tuple, stride: tuple, requires_grad: bool, hooks: object, *_: object
) -> torch.Tensor:
    """`torch._utils._rebuild_tensor_v2` for our own `_Storage`, with the view checked against the storage's size."""
    if not isinstance(storage, _Storage):
        raise TypeError(f"tensor over {type(storage).__name__}, not over a storage of the archive")
    if not all(isinstance(n, int) and n >= 0 for n in (offset, *size, *stride)) or len(size) != len(stride):
        raise ValueError(f"bad tensor view: offset {offset!r}, size {size!r}, stride {stride!r}")
    # a view past the storage's end must not be built: torch would either fail or grow the storage silently
    end = offset + sum((n - 1) * step for n, step in zip(size, stride, strict=True)) + 1 if math.prod(size) else offset
    if end * storage.dtype.itemsize > storage.data.nbytes():
        raise ValueError(f"tensor view of size {tuple(size)} at offset {offset} runs past its storage")
    return torch.empty(0, dtype=storage.dtype).set_(storage.data, offset, tuple(size), tuple(stride))


def _same(value: object, *_: object) -> object:
    return value


# The globals a TorchScript `data.pkl` may name, each resolved to our own harmless implementation. The
# `torch.jit._pickle` helpers only tag lists with their static type (torch's own versions return the value unchanged).
_ALLOWED_GLOBALS: dict[str, Callable[..., Any]] = {
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "collections.OrderedDict": OrderedDict,  # the (empty) backward-hooks argument of every tensor
    "torch.jit._pickle.restore_type_tag": _same,
    "torch.jit._pickle.build_intlist": _same,
    "torch.jit._pickle.build_doublelist": _same,
    "torch.jit._pickle.build_boollist": _same,
    "torch.jit._pickle.build_tensorlist": _same,
}


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, reader: _ArchiveReader, data: bytes):
        super().__init__(io.BytesIO(data))
        self.reader = reader

    def find_class(self, module: str, name: str) -> Any:
        # Every global pickle resolves (GLOBAL, STACK_GLOBAL, INST, OBJ, EXT*) goes through here.
        if module == "__torch__" or module.startswith("__torch__."):
            return self.reader.stub_class(f"{module}.{name}")
        if module == "torch" and name in _STORAGE_CLASSES:
            return _STORAGE_CLASSES[name]
        allowed = _ALLOWED_GLOBALS.get(f"{module}.{name}")
        if allowed is None:
            raise CheckpointError(
                f"TorchScript archive {self.reader.path}: data.pkl refers to {module}.{name}, which a weights reader "
                "does not allow (only tensors and the archive's own classes, as data)"
            )
        return allowed

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"unknown persistent id {pid!r}")
        _, storage_class, key, _location, numel = pid  # any location: everything is read onto the CPU
        if not (isinstance(storage_class, _StorageClass) and isinstance(key, str) and isinstance(numel, int)):
            raise ValueError(f"bad storage reference {pid!r}")
        return self.reader.storage(key, storage_class.dtype, numel)


class _ArchiveReader:
    def __init__(self, path: Path, archive: zipfile.ZipFile):
        self.path, self.archive = path, archive
        # exactly one top-level folder holds data.pkl; its name is free (OpenAI's: "ViT-B-16")
        roots = {
            name.split("/")[0] for name in archive.namelist() if name.count("/") == 1 and name.endswith("/data.pkl")
        }
        if len(roots) != 1:
            raise CheckpointError(f"TorchScript archive {path}: expected one <archive>/data.pkl, found {len(roots)}")
        self.root = roots.pop()
        byteorder = self._record("byteorder") or b"little"
        if byteorder not in (b"little", b"big"):
            raise CheckpointError(f"TorchScript archive {path}: unknown byte order {byteorder!r}")
        self.swap_bytes = byteorder.decode() != sys.byteorder
        self.storages: dict[str, _Storage] = {}
        self.stubs: dict[str, type[_ScriptObject]] = {}
        self.classes: dict[str, _ModuleClass | None] = {}

    def stub_class(self, qualified_name: str) -> type[_ScriptObject]:
        """The inert stand-in for one of the archive's classes (one per name, so objects can be told apart by class)."""
        if qualified_name not in self.stubs:
            name = qualified_name.rpartition(".")[2]
            self.stubs[qualified_name] = type(name, (_ScriptObject,), {"qualified_name": qualified_name})
        return self.stubs[qualified_name]

    def _record(self, name: str) -> bytes | None:
        try:
            return self.archive.read(f"{self.root}/{name}")
        except KeyError:
            return None

    def unpickle_data(self) -> _ScriptObject:
        root = _ArchiveUnpickler(self, self.archive.read(f"{self.root}/data.pkl")).load()
        if not isinstance(root, _ScriptObject):
            raise CheckpointError(
                f"TorchScript archive {self.path}: data.pkl holds a {type(root).__name__}, not a module"
            )
        return root

    def storage(self, key: str, dtype: torch.dtype, numel: int) -> _Storage:
        if key not in self.storages:
            raw = self._record(f"data/{key}")
            nbytes = numel * dtype.itemsize
            if raw is None or len(raw) < nbytes:
                raise ValueError(f"storage data/{key} is missing or shorter than {nbytes} bytes")
            untyped = torch.UntypedStorage.from_buffer(memoryview(raw)[:nbytes], dtype=torch.uint8)  # one copy
            if self.swap_bytes:
                untyped.byteswap(dtype)
            self.storages[key] = _Storage(dtype, untyped)
        stored = self.storages[key]
        if stored.dtype != dtype:
            raise ValueError(f"storage data/{key} is read as both {stored.dtype} and {dtype}")
        return stored

    def module_class(self, qualified_name: str) -> _ModuleClass | None:
        """What the archive's code declares for a module class; None for a class that is not a module (or not found)."""
        if qualified_name not in self.classes:
            self.classes[qualified_name] = self._read_module_class(qualified_name)
        return self.classes[qualified_name]

    def _read_module_class(self, qualified_name: str) -> _ModuleClass | None:
        module, _, name = qualified_name.rpartition(".")
        source = self._record(f"code/{module.replace('.', '/')}.py")
        if source is None:
            return None
        try:
            tree = ast.parse(source.decode("utf-8"))  # parsed as text only: nothing in it is compiled or run
        except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, MemoryError) as error:
            raise CheckpointError(
                f"TorchScript archive {self.path}: code of {qualified_name} cannot be parsed"
            ) from error
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                declared = {
                    statement.targets[0].id: statement.value
                    for statement in node.body
                    if isinstance(statement, ast.Assign)
                    and len(statement.targets) == 1
                    and isinstance(statement.targets[0], ast.Name)
                    and statement.targets[0].id in ("__parameters__", "__buffers__")
                }
                if len(declared) != 2:
                    return None  # a TorchScript class, not a module: it holds no state-dict entries
                setstate = any(isinstance(s, ast.FunctionDef) and s.name == "__setstate__" for s in node.body)
                return _ModuleClass(
                    self._names(declared["__parameters__"], qualified_name),
                    self._names(declared["__buffers__"], qualified_name),
                    setstate,
                )
        return None

    def _names(self, node: ast.expr, qualified_name: str) -> tuple[str, ...]:
        try:
            names = ast.literal_eval(node)  # a literal only: anything else raises, nothing is evaluated
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            names = None
        if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
            raise CheckpointError(f"TorchScript archive {self.path}: {qualified_name} declares its weights oddly")
        return tuple(names)

    def collect_state(self, module: _ScriptObject, prefix: str, out: dict[str, torch.Tensor]) -> None:
        """Add `module`'s parameters and buffers, then its submodules', to `out` (the order of `state_dict()`)."""
        declared = self.module_class(module.qualified_name)
        if declared is None:
            if prefix:
                return  # an object of a TorchScript class inside a module: not part of the state dict
            raise CheckpointError(f"TorchScript archive {self.path}: root {module.qualified_name} is not a module")
        state = getattr(module, "state", None)
        if declared.has_setstate or not isinstance(state, dict):
            raise CheckpointError(
                f"TorchScript archive {self.path}: {module.qualified_name} restores itself with its own __setstate__; "
                "its weights cannot be read without running the archive's code, which is not done"
            )
        # parameters, then buffers, each in attribute order: the order of nn.Module.state_dict
        for names in (declared.parameters, declared.buffers):
            for name, value in state.items():
                if name in names and isinstance(value, torch.Tensor):  # an unset Optional weight is None: skipped
                    out[prefix + name] = value
        for name, value in state.items():
            if isinstance(value, _ScriptObject):
                self.collect_state(value, f"{prefix}{name}.", out)
