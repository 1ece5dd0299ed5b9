"""The CAM method registry: one module per method, each declaring its run settings once (`SETTINGS`, a params
schema) and how a run of it is built (`build`). `cams.runs.<name>.method` picks one; the driver
(`wsss_core.drivers.cams`) runs any of them, and params, dvc.yaml and the tests read this dict, so adding a method is
one module, one line here and one preset.

Every method module has:
  SETTINGS: Schema          its keys of a cams run besides the common ones (`common.RUN`)
  READS: str | None         the artifact family its run reads besides the index ("prompts": artifacts/prompts_<run>,
                            "descriptions": artifacts/descriptions_<run>,
                            "adapter": artifacts/adapter_<run>,
                            "sd_cache": artifacts/sd_cache_<run>)
  build(clip, run, class_names) -> CamGenerator
"""

from __future__ import annotations

from wsss_core.cam.methods import clip_es, diclip, diclip_adapter, excel, excel_adapter, fma_prompts

CAM_METHODS = {
    "clip_es": clip_es,
    "fma_prompts": fma_prompts,
    "excel": excel,
    "excel_adapter": excel_adapter,
    "diclip": diclip,
    "diclip_adapter": diclip_adapter,
}
