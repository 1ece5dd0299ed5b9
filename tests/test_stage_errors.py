"""run_stage: a full disk or exceeded quota is a one-line message naming the path, not a traceback; params whose
pipeline is broken are refused, naming the key, before the stage runs."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import typer
import yaml

from wsss_core.stage import run_stage

ROOT = Path(__file__).resolve().parents[1]


def _raising(error: BaseException):
    def body(params, log):
        raise error

    return body


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # run_log writes logs/ into the working directory
    return tmp_path


def test_disk_full_names_the_path_and_the_free_space(in_tmp, capsys):
    target = in_tmp / "artifacts" / "cams_caa.zarr" / "c" / "0"
    error = OSError(errno.ENOSPC, "No space left on device", str(target))
    with pytest.raises(typer.Exit) as raised:
        run_stage("cams_caa", _raising(error), ROOT / "params.yaml")
    assert raised.value.exit_code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"cams_caa: error: no space left on device while writing {target} (")
    assert " free on that filesystem)" in err  # measured on tmp_path, the nearest existing parent
    assert "Traceback" not in err


def test_disk_full_without_a_filename_falls_back_to_the_working_directory(in_tmp, capsys):
    error = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(typer.Exit) as raised:
        run_stage("seeds_crf", _raising(error), ROOT / "params.yaml")
    assert raised.value.exit_code == 1
    err = capsys.readouterr().err
    assert f"seeds_crf: error: no space left on device while writing a file under {Path.cwd()}" in err
    assert " free on that filesystem)" in err


@pytest.mark.skipif(not hasattr(errno, "EDQUOT"), reason="no EDQUOT on this platform")
def test_quota_exceeded_is_reported_the_same_way(in_tmp, capsys):
    error = OSError(errno.EDQUOT, "Disk quota exceeded", "/some/path")
    with pytest.raises(typer.Exit) as raised:
        run_stage("retrain", _raising(error), ROOT / "params.yaml")
    assert raised.value.exit_code == 1
    err = capsys.readouterr().err
    assert err.startswith("retrain: error: disk quota exceeded while writing /some/path (")


def test_free_space_unknown_does_not_hide_the_error(in_tmp, capsys, monkeypatch):
    def no_usage(path):
        raise PermissionError(errno.EACCES, "denied", str(path))

    monkeypatch.setattr("wsss_core.stage.shutil.disk_usage", no_usage)
    with pytest.raises(typer.Exit):
        run_stage(
            "cams_caa", _raising(OSError(errno.ENOSPC, "No space left on device", "/some/path")), ROOT / "params.yaml"
        )
    assert "while writing /some/path (free space unknown)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.EIO, "Input/output error", "/some/path"),
        PermissionError(errno.EACCES, "Permission denied", "/some/path"),
        FileNotFoundError(errno.ENOENT, "No such file or directory", "/some/path"),
        OSError("no errno at all"),
    ],
    ids=["EIO", "EACCES", "ENOENT", "no-errno"],
)
def test_other_os_errors_still_propagate(in_tmp, error):
    with pytest.raises(type(error)) as raised:
        run_stage("cams_caa", _raising(error), ROOT / "params.yaml")
    assert raised.value is error


def test_a_broken_pipeline_is_refused_before_the_stage_runs(in_tmp, capsys):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    del params["cams"]["runs"]["raw"]  # seeds.variants.cam still reads its CAMs
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = []
    with pytest.raises(typer.Exit) as raised:
        run_stage("cams_caa", lambda params, log: ran.append(True), in_tmp / "params.yaml")
    assert raised.value.exit_code == 1 and ran == []
    err = capsys.readouterr().err
    assert err.startswith(
        "cams_caa: error: seeds.variants.cam.cams: artifacts/cams_raw.zarr is read by stage seeds@cam"
    )
    run_stage("cams_caa", lambda params, log: ran.append(params["cams"]["runs"]["caa"]["method"]), ROOT / "params.yaml")
    assert ran == ["clip_es"]
