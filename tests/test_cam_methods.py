"""Every registered CAM method (wsss_core.cam.methods.CAM_METHODS) through the one CAM driver: a method is tested by
being registered. What a method reads besides the index is made here by the stage that makes it in a pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import small_params
from tests.test_sd_cache import TINY_MASKS
from tests.test_stages import run_ok
from wsss_core.cam.methods import CAM_METHODS
from wsss_core.cam.methods.common import RUN
from wsss_core.params import ParamsError, validate_section
from wsss_core.params.schema import CAMS
from wsss_core.store import DenseMaps


def _attribute_bank() -> None:
    """ExCEL's attribute bank, written as a describe run writes it (bank.zarr) and marked imported (`dvc import`
    leaves a .dvc file) so that the params check accepts a cams run reading it without a describe run."""
    from tests.test_excel_cam import random_bank, write_bank
    from wsss_core.data.index import read_index

    num_classes = len(read_index(Path("artifacts/index/train.parquet")).class_names) - 1
    write_bank(Path("artifacts/descriptions_probe"), *random_bank(num_classes))
    Path("artifacts/descriptions_probe.dvc").write_text("# stands for `dvc import` of an attribute bank\n")


def _adapter() -> None:
    """ExCEL's adapter, trained by the adapt stage (a few iterations on small crops) on the attribute bank above."""
    params = yaml.safe_load(Path("params.yaml").read_text())
    run = {"method": "excel", "reads": "artifacts/descriptions_probe", "svc_layers": 2, "caa_layers": 2}
    run.update(iterations=2, batch_size=2, crop_size=32, warmup_iterations=1, embedding_dim=32, heads=4)
    params["adapt"]["runs"]["probe"] = {**run, "dynamic_from": 1, "par_iterations": 2}  # beside the shipped runs
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_ok("adapt", "probe")


def _sd_cache() -> None:
    """DiCLIP's key-value cache, drawn and labelled by the sd_cache stage with tiny Stable Diffusion pipelines."""
    from tests.test_sd_cache import tiny_cache_run
    from tests.tiny_sd import save_tiny_pipeline

    params = yaml.safe_load(Path("params.yaml").read_text())
    pipelines = {
        "generator": save_tiny_pipeline(Path("sd_generator")),
        "diffusion": save_tiny_pipeline(Path("sd"), (4, 4)),
    }
    params["sd_cache"].update(device="cpu", runs={"probe": tiny_cache_run(pipelines)})
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_ok("sd_cache", "probe")


def _diclip_adapter() -> None:
    """DiCLIP's adapter, trained by the adapt stage on the cache above (a few iterations on small crops)."""
    from tests.test_sd_cache import TINY_ADAPT

    params = yaml.safe_load(Path("params.yaml").read_text())
    params["adapt"]["runs"]["diclip_probe"] = {"method": "diclip", "reads": "artifacts/sd_cache_probe", **TINY_ADAPT}
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_ok("adapt", "diclip_probe")


# READS kind -> (the artifact a run of that kind reads, the stage and argument that make it, or a function)
READ_ARTIFACTS = {
    None: ("artifacts/index", None),
    "prompts": ("artifacts/prompts_classification", ("learn", "classification")),
    "descriptions": ("artifacts/descriptions_probe", _attribute_bank),
    "adapter": ("artifacts/adapter_probe", _adapter),
    "sd_cache": ("artifacts/sd_cache_probe", _sd_cache),
}
# A method whose artifact is another method's kind (a DiCLIP adapter, not ExCEL's) names its own maker
METHOD_READS = {"diclip_adapter": ("artifacts/adapter_diclip_probe", _diclip_adapter)}
# Settings a method needs on the tiny models, besides its depth (caa_layers, svc_layers: the tiny CLIP has 3 blocks)
TINY_SETTINGS = {"diclip": TINY_MASKS, "diclip_adapter": {"input_size": 64}}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("cam_methods")
    (root / "params.yaml").write_text(yaml.safe_dump(small_params(), sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        run_ok("demo_data")
        run_ok("prepare")
        for _, maker in [*READ_ARTIFACTS.values(), *METHOD_READS.values()]:
            if callable(maker):
                maker()
            elif maker:
                run_ok(*maker)
    return root


def test_methods_declare_settings_apart_from_the_common_keys():
    for name, method in CAM_METHODS.items():
        assert not set(method.SETTINGS) & {"method", *RUN}, name
        assert method.READS in READ_ARTIFACTS, f"{name}: add how tests make what it reads"
        defaults = validate_section(
            {"method": name, "reads": "x"}, CAMS["runs"].entry_schema({"method": name}, name), name
        )
        assert set(defaults) == {"method", *RUN, *method.SETTINGS}
    other = {"clip_es": "refine", "fma_prompts": "template"}
    with pytest.raises(ParamsError, match=r"cams\.runs\.a\.template: unknown key"):
        validate_section(
            {"runs": {"a": {"method": "fma_prompts", "reads": "x", other["fma_prompts"]: "{}"}}}, CAMS, "cams"
        )


@pytest.mark.parametrize("method", sorted(CAM_METHODS))
@pytest.mark.parametrize("resolution", ["feature", "image"])
def test_every_method_writes_a_cam_artifact(method, resolution, indexed, monkeypatch):
    monkeypatch.chdir(indexed)
    params = yaml.safe_load((indexed / "params.yaml").read_text())
    reads, _ = METHOD_READS.get(method) or READ_ARTIFACTS[CAM_METHODS[method].READS]
    run = {"method": method, "reads": reads, "store_resolution": resolution}
    for key in ("caa_layers", "svc_layers"):
        if key in CAM_METHODS[method].SETTINGS:
            run[key] = 2  # the tiny CLIP has 3 blocks
    run.update(TINY_SETTINGS.get(method, {}))
    params["cams"]["runs"]["probe"] = run
    (indexed / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_ok("cams", "probe", "--out", f"artifacts/cams_probe_{method}_{resolution}.zarr")

    cams = DenseMaps(indexed / "artifacts" / f"cams_probe_{method}_{resolution}.zarr", kind="cams")
    assert len(cams) == 6
    for index in range(len(cams)):
        maps = cams[index]
        size = (64, 64) if resolution == "image" else (4, 4)  # 64x64 images, the tiny CLIP's 16-pixel patches
        assert maps.shape == (len(cams.classes(index)), *size)
        assert maps.min() >= 0 and maps.max() <= 1 and len(cams.classes(index)) > 0
    provenance = cams.provenance
    assert provenance["params"]["cams.runs.probe"]["method"] == method
    assert provenance["details"]["run"] == "probe" and provenance["details"]["resolution"] == resolution
    if CAM_METHODS[method].READS:
        assert CAM_METHODS[method].READS in provenance["upstream"]
