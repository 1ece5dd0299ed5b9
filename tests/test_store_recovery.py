"""Dense artifacts under failure: code changes between a kill and its resume, kills at every step of the commit,
outputs on another filesystem, and two processes writing the same artifact."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT
from wsss_core.hashing import sha256_path
from wsss_core.provenance import make_provenance
from wsss_core.store import ArtifactError, DenseMaps, DenseMapWriter, atomic, scratch


class Killed(Exception):
    """Stands for the process being killed at this point."""


IDS = [f"img_{i}" for i in range(6)]
SIZES = np.array([[4, 5]] * 6)


def _writer(path: Path, scratch_root: Path) -> DenseMapWriter:
    return DenseMapWriter(
        path,
        kind="labels",
        image_ids=IDS,
        sizes=SIZES,
        dtype="uint8",
        class_names=("background", "a"),
        provenance=make_provenance("test", {"k": 1}),
        scratch_root=scratch_root,
        shard_images=2,
    )


def _maps(value: int) -> list[np.ndarray]:
    return [np.full((4, 5), value + i, dtype=np.uint8) for i in range(len(IDS))]


def _write(path: Path, scratch_root: Path, maps: list[np.ndarray], stop_after: int | None = None) -> DenseMapWriter:
    writer = _writer(path, scratch_root)
    for count, index in enumerate(writer.pending()):
        if count == stop_after:
            raise Killed
        writer.write(index, maps[index])
    return writer


def _content(path: Path) -> list[np.ndarray]:
    reader = DenseMaps(path)
    return [reader[i] for i in range(len(reader))]


def test_a_code_change_between_kill_and_resume_discards_the_unfinished_shards(tmp_path, monkeypatch):
    with pytest.raises(Killed):
        _write(tmp_path / "out.zarr", tmp_path / "scratch", _maps(0), stop_after=4)  # two shards of three done
    monkeypatch.setattr(scratch, "code_fingerprint", lambda: "the code was edited")
    writer = _write(tmp_path / "out.zarr", tmp_path / "scratch", _maps(100))
    writer.commit()
    assert [int(m[0, 0]) for m in _content(tmp_path / "out.zarr")] == [100, 101, 102, 103, 104, 105]


def test_the_code_fingerprint_follows_every_source_file(tmp_path, monkeypatch):
    package = tmp_path / "wsss_core"
    shutil.copytree(ROOT / "wsss_core", package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(scratch, "_PACKAGE_DIR", package)

    def fingerprint() -> str:
        scratch.code_fingerprint.cache_clear()
        return scratch.code_fingerprint()

    try:
        before = fingerprint()
        (package / "cam" / "gradcam.py").write_text((package / "cam" / "gradcam.py").read_text() + "\n# edited\n")
        assert fingerprint() != before
        (tmp_path / "stages").mkdir()
        (tmp_path / "stages" / "cams.py").write_text("print('a stage')\n")
        edited = fingerprint()
        (tmp_path / "stages" / "cams.py").write_text("print('another stage')\n")
        assert fingerprint() != edited
    finally:
        scratch.code_fingerprint.cache_clear()


# Every filesystem step the commit takes: a kill before any one of them must leave a state the next run completes.
_STEPS = ("replace", "rmtree", "copytree")


def _kill_at_step(monkeypatch, step: int) -> dict[str, int]:
    seen = {"n": 0}
    originals = {"replace": os.replace, "rmtree": shutil.rmtree, "copytree": shutil.copytree}

    def wrap(name):
        def dying(*args, **kwargs):
            seen["n"] += 1
            if seen["n"] == step:
                if name == "rmtree":  # die half-way through the deletion, as a kill would
                    victim = Path(args[0])
                    files = sorted(p for p in victim.rglob("*") if p.is_file()) if victim.is_dir() else []
                    for file in files[: len(files) // 2]:
                        file.unlink()
                raise Killed
            return originals[name](*args, **kwargs)

        return dying

    monkeypatch.setattr(os, "replace", wrap("replace"))
    monkeypatch.setattr(shutil, "rmtree", wrap("rmtree"))
    monkeypatch.setattr(shutil, "copytree", wrap("copytree"))
    return seen


@pytest.mark.parametrize("other_filesystem", [False, True], ids=["same-fs", "other-fs"])
def test_a_kill_at_any_step_of_the_commit_loses_nothing_and_the_rerun_completes(
    tmp_path, monkeypatch, other_filesystem
):
    out, scratch_root = tmp_path / "out.zarr", tmp_path / "scratch"
    if other_filesystem:
        monkeypatch.setattr(atomic, "_same_filesystem", lambda source, directory: False)
    _write(out, scratch_root, _maps(0)).commit()
    old = sha256_path(out)

    writer = _write(out, scratch_root, _maps(50))
    with monkeypatch.context() as patch:  # count the steps of an undisturbed commit
        seen = _kill_at_step(patch, step=-1)
        writer.commit()
    steps = seen["n"]
    assert steps >= 3
    new = sha256_path(out)
    for step in range(1, steps + 1):
        _write(out, scratch_root, _maps(0)).commit()  # back to the old artifact
        writer = _write(out, scratch_root, _maps(50))
        with monkeypatch.context() as patch:
            _kill_at_step(patch, step)
            with pytest.raises(Killed):
                writer.commit()
        copies = [p for p in (out, out.with_name(f".{out.name}.old")) if p.is_dir()]
        assert any(sha256_path(p) in (old, new) for p in copies), f"killed at step {step}: no complete copy left"
        _write(out, scratch_root, _maps(50)).commit()  # the next run: no FileNotFoundError, no stale shard
        assert sha256_path(out) == new, f"killed at step {step}"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr", "scratch"]
        assert list(scratch_root.iterdir()) == []


def _separate_filesystem() -> Path | None:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(tempfile.gettempdir()).st_dev:
        return shm
    return None


@pytest.mark.skipif(_separate_filesystem() is None, reason="needs /dev/shm on a filesystem of its own")
def test_an_output_on_another_filesystem_replaces_the_old_artifact(tmp_path):
    out_dir = Path(tempfile.mkdtemp(dir=_separate_filesystem()))
    try:
        _write(out_dir / "out.zarr", tmp_path / "scratch", _maps(0)).commit()
        _write(out_dir / "out.zarr", tmp_path / "scratch", _maps(7)).commit()
        assert [int(m[0, 0]) for m in _content(out_dir / "out.zarr")] == [7, 8, 9, 10, 11, 12]
        assert sorted(p.name for p in out_dir.iterdir()) == ["out.zarr"]
    finally:
        shutil.rmtree(out_dir)


def test_a_failed_final_rename_puts_the_old_artifact_back(tmp_path, monkeypatch):
    out, scratch_root = tmp_path / "out.zarr", tmp_path / "scratch"
    _write(out, scratch_root, _maps(0)).commit()
    old = sha256_path(out)
    writer = _write(out, scratch_root, _maps(9))
    real_replace = os.replace

    def cross_device(source, target):
        if Path(target) == out and Path(source).name != ".out.zarr.old":  # the new artifact's move fails
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(source))
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", cross_device)
    with pytest.raises(OSError, match="cross-device"):
        writer.commit()
    monkeypatch.setattr(os, "replace", real_replace)
    assert sha256_path(out) == old and not out.with_name(".out.zarr.old").exists()
    writer.commit()  # the same writer, the same finished shards, succeeds once the rename can be made
    assert [int(m[0, 0]) for m in _content(out)] == [9, 10, 11, 12, 13, 14]


_HOLDER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[3])
    from pathlib import Path
    from tests.test_store_recovery import _writer
    writer = _writer(Path(sys.argv[1]), Path(sys.argv[2]))
    print("holding", flush=True)
    sys.stdin.read()
    """
)


def test_a_second_process_writing_the_same_artifact_is_refused_until_the_first_ends(tmp_path):
    out, scratch_root = tmp_path / "out.zarr", tmp_path / "scratch"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out), str(scratch_root), str(ROOT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(ArtifactError, match=rf"out.zarr .*another running process \(pid {holder.pid}"):
            _writer(out, scratch_root)
    finally:
        holder.communicate("")  # closing its stdin ends it, and the kernel drops its locks
    assert holder.returncode == 0
    _write(out, scratch_root, _maps(3)).commit()
    assert [int(m[0, 0]) for m in _content(out)] == [3, 4, 5, 6, 7, 8]
