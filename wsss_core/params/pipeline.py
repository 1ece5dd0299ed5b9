"""The pipeline a params file describes, as dvc.yaml will run it: which stages exist (one per family entry), what
each reads and writes, and the cross-key check that every artifact a stage reads is made by a stage of the same
params, by the demo pipeline (demo/dvc.yaml), or is a file that exists.

The stage names and paths here mirror dvc.yaml; tests/test_presets.py checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from wsss_core.cam.methods.common import INDEX
from wsss_core.params.spec import ParamsError

# What a prediction variant's `segmenter` names: a retrain run's network, or an adapter (ExCEL's WeCLIP head).
SEGMENTERS = ("artifacts/segmenter_", "artifacts/adapter_")
# What demo/dvc.yaml makes: the root pipeline reaches it only through these paths in params.
DEMO_OUTPUTS = {"data/demo": "demo/dvc.yaml:demo_data", "artifacts/demo_clip": "demo/dvc.yaml:demo_clip"}
# A describe run's descriptions are the user's to write (or an LLM's: source openai).
DESCRIPTIONS_HINT = (
    "; write it (YAML or JSON: each class name of the dataset -> its n sentences; ExCEL's published "
    "attributes_text/descriptors_*.json is such a file) or switch the run to source: openai"
)
# Networks whose backbone is the frozen CLIP of models.clip (the retrain and predict drivers load it for these).
CLIP_NETWORKS = ("weclip_head",)


@dataclass(frozen=True)
class Stage:
    """One stage as dvc.yaml names it ("cams@caa"): the paths it reads (keyed by the params key that names each),
    the artifacts it writes, and the params key of the entry or section it comes from ("cams.runs.caa")."""

    name: str
    reads: dict[str, str] = field(default_factory=dict)
    writes: tuple[str, ...] = ()
    key: str = ""


def _clip_read(params: dict[str, Any]) -> dict[str, str]:
    checkpoint = params["models"]["clip"]["checkpoint"]
    return {"models.clip.checkpoint": checkpoint}


def segmenter_needs_clip(params: dict[str, Any], segmenter: str) -> bool:
    """Whether predicting with the artifact `segmenter` loads the CLIP of models.clip: an adapter always does, a
    retrain run's network when it is a CLIP network, a segmenter no run of these params makes (imported) maybe."""
    if not segmenter.startswith("artifacts/segmenter_"):
        return True
    run = params["retrain"]["runs"].get(segmenter.removeprefix("artifacts/segmenter_"))
    return run is None or run["network"] in CLIP_NETWORKS


def pipeline_stages(params: dict[str, Any]) -> list[Stage]:
    """Every stage a root `dvc repro` runs for `params` (validated), family by family in dvc.yaml's order."""
    seeds, sams = params["seeds"]["variants"], params["seeds"]["sams"]["variants"]
    stages = [Stage("prepare", {"dataset.root": params["dataset"]["root"]}, (INDEX,), "dataset")]
    for name in params["sam_masks"]["runs"]:
        stages.append(Stage(f"sam_masks@{name}", {}, (f"artifacts/masks_{name}",), f"sam_masks.runs.{name}"))
    for name, run in params["sd_cache"]["runs"].items():
        key = f"sd_cache.runs.{name}"
        reads = {f"{key}.generator": run["generator"], f"{key}.diffusion": run["diffusion"], **_clip_read(params)}
        stages.append(Stage(f"sd_cache@{name}", reads, (f"artifacts/sd_cache_{name}",), key))
    for name, run in params["describe"]["runs"].items():
        reads = {f"describe.runs.{name}.reads": run["reads"], **_clip_read(params)}
        stages.append(Stage(f"describe@{name}", reads, (f"artifacts/descriptions_{name}",), f"describe.runs.{name}"))
    for name, run in params["learn"]["runs"].items():
        reads = {f"learn.runs.{name}.reads": run["reads"], **_clip_read(params)}
        stages.append(Stage(f"learn@{name}", reads, (f"artifacts/prompts_{name}",), f"learn.runs.{name}"))
    for name, run in params["adapt"]["runs"].items():
        reads = {f"adapt.runs.{name}.reads": run["reads"], **_clip_read(params)}
        stages.append(Stage(f"adapt@{name}", reads, (f"artifacts/adapter_{name}",), f"adapt.runs.{name}"))
    for name, run in params["cam_nets"]["runs"].items():
        reads = {f"cam_nets.runs.{name}.backbone.checkpoint": run["backbone"]["checkpoint"]}
        stages.append(Stage(f"cam_net@{name}", reads, (f"artifacts/camnet_{name}",), f"cam_nets.runs.{name}"))
    for name, run in params["cams"]["runs"].items():
        reads = {f"cams.runs.{name}.reads": run["reads"], **_clip_read(params)}
        stages.append(Stage(f"cams@{name}", reads, (f"artifacts/cams_{name}.zarr",), f"cams.runs.{name}"))
    for name, entry in params["cam_nets"]["cams"].items():
        reads = {f"cam_nets.cams.{name}.reads": entry["reads"]}
        stages.append(Stage(f"net_cams@{name}", reads, (f"artifacts/cams_{name}.zarr",), f"cam_nets.cams.{name}"))
    for name, variant in seeds.items():
        reads = {f"seeds.variants.{name}.cams": f"artifacts/{variant['cams']}.zarr"}
        stages.append(Stage(f"seeds@{name}", reads, (f"artifacts/seeds_{name}.zarr",), f"seeds.variants.{name}"))
    for name, variant in sams.items():
        reads = {
            f"seeds.sams.variants.{name}.cams": f"artifacts/{variant['cams']}.zarr",
            f"seeds.sams.variants.{name}.masks": f"artifacts/masks_{variant['masks']}",
        }
        stages.append(
            Stage(f"sams_seeds@{name}", reads, (f"artifacts/seeds_{name}.zarr",), f"seeds.sams.variants.{name}")
        )
    for family, key, variants in (
        ("evaluate", "seeds.variants", seeds),
        ("evaluate_sams", "seeds.sams.variants", sams),
    ):
        for name in variants:
            stages.append(Stage(f"{family}@{name}", {}, (f"metrics/seeds_{name}",), f"{key}.{name}"))
    retrain = params["retrain"]
    for name, run in retrain["runs"].items():
        clip = _clip_read(params) if run["network"] in CLIP_NETWORKS else {}
        reads = {f"retrain.runs.{name}.seeds": f"artifacts/seeds_{run['seeds']}.zarr", **clip}
        stages.append(Stage(f"retrain@{name}", reads, (f"artifacts/segmenter_{name}",), f"retrain.runs.{name}"))
    for name, variant in retrain["predict"]["variants"].items():
        key = f"retrain.predict.variants.{name}"
        reads = {f"{key}.segmenter": variant["segmenter"]}
        if variant["reads"] != variant["segmenter"]:
            reads[f"{key}.reads"] = variant["reads"]
        if segmenter_needs_clip(params, variant["segmenter"]):
            reads.update(_clip_read(params))
        stages.append(Stage(f"predict@{name}", reads, (f"artifacts/predictions_{name}.zarr",), key))
    for name in retrain["predict"]["variants"]:
        key = f"retrain.predict.variants.{name}"
        stages.append(Stage(f"evaluate_predictions@{name}", {}, (f"metrics/predictions_{name}",), key))
    return stages


def _kind_problems(params: dict[str, Any]) -> list[str]:
    """Reads whose kind is fixed by the entry's method, task or post-processing."""
    from wsss_core.adapter import ADAPT_METHODS
    from wsss_core.cam.methods import CAM_METHODS

    problems = []

    def expect(key: str, value: str, wanted: str, what: str, *, prefix: bool = False) -> None:
        if not (value.startswith(wanted) if prefix else value == wanted):
            problems.append(f"{key}: {value!r} is not {what}")

    for name, run in params["describe"]["runs"].items():
        key = f"describe.runs.{name}.reads"
        if run["source"] == "openai":
            expect(key, run["reads"], INDEX, f"{INDEX} (an openai run reads only the class names of the index)")
        elif not run["reads"].lower().endswith((".yaml", ".yml", ".json")):
            problems.append(f"{key}: {run['reads']!r} is not a descriptions file (.yaml, .yml or .json)")
    for name, run in params["learn"]["runs"].items():
        key = f"learn.runs.{name}.reads"
        if run["task"] == "classification":
            expect(key, run["reads"], INDEX, f"{INDEX} (classification prompts read only the index)")
        else:
            expect(
                key, run["reads"], "artifacts/seeds_", "a seed artifact, artifacts/seeds_<variant>.zarr", prefix=True
            )
    for section, methods in (("adapt", ADAPT_METHODS), ("cams", CAM_METHODS)):
        for name, run in params[section]["runs"].items():
            key, family = f"{section}.runs.{name}.reads", methods[run["method"]].READS
            if family is None:
                expect(key, run["reads"], INDEX, f"{INDEX} ({run['method']} reads nothing else)")
            else:
                expect(key, run["reads"], f"artifacts/{family}_", f"artifacts/{family}_<run>", prefix=True)
    for name, entry in params["cam_nets"]["cams"].items():
        key = f"cam_nets.cams.{name}.reads"
        expect(key, entry["reads"], "artifacts/camnet_", "artifacts/camnet_<a key of cam_nets.runs>", prefix=True)
    seeds = params["seeds"]
    for family, variants in (("seeds.variants", seeds["variants"]), ("seeds.sams.variants", seeds["sams"]["variants"])):
        for name, variant in variants.items():
            cams = "a CAM artifact, cams_<a key of cams.runs>"
            expect(f"{family}.{name}.cams", variant["cams"], "cams_", cams, prefix=True)
    for name, variant in params["retrain"]["predict"]["variants"].items():
        key, segmenter = f"retrain.predict.variants.{name}", variant["segmenter"]
        what = "artifacts/segmenter_<a key of retrain.runs> or artifacts/adapter_<a key of adapt.runs>"
        if not segmenter.startswith(SEGMENTERS):
            problems.append(f"{key}.segmenter: {segmenter!r} is not {what}")
        if variant["postprocess"] == "sams":
            masks = "artifacts/masks_<a key of sam_masks.runs>"
            expect(f"{key}.reads", variant["reads"], "artifacts/masks_", masks, prefix=True)
            run = params["sam_masks"]["runs"].get(variant["reads"].removeprefix("artifacts/masks_"))
            if run is not None and not run["eval_split"]:
                problems.append(f"{key}.reads: {variant['reads']} has no eval-split masks (its eval_split is false)")
        else:
            what = f"{segmenter}, the variant's segmenter (postprocess {variant['postprocess']} reads nothing else)"
            expect(f"{key}.reads", variant["reads"], segmenter, what)
    return problems


def _made_by(path: str, outputs: dict[str, str]) -> str | None:
    """The stage whose output is `path` or a directory holding it."""
    target = PurePosixPath(path)
    for output, stage in outputs.items():
        if target == PurePosixPath(output) or PurePosixPath(output) in target.parents:
            return stage
    return None


def pipeline_problems(params: dict[str, Any], *, files: bool = True, root: Path = Path(".")) -> list[str]:
    """Everything that keeps the params' pipeline from running, one message per problem naming the key.

    With `files`, a read that no stage makes must be a file or folder that exists under `root` (the dataset, a
    checkpoint); without, only reads of artifacts/ must be made by a stage (the check a stage runs on load).
    """
    stages = pipeline_stages(params)
    writers: dict[str, Stage] = {}
    problems = _kind_problems(params)
    for stage in stages:
        for path in stage.writes:
            other = writers.get(path)
            if other is not None:
                problems.append(
                    f"{stage.key}: its stage {stage.name} would write {path}, as {other.name} of {other.key} does; "
                    "rename one of them"
                )
            writers[path] = stage
    outputs = {path: stage.name for path, stage in writers.items()}
    outputs.update(DEMO_OUTPUTS)
    unmade: dict[tuple[str, str | None], list[str]] = {}  # (params key, path) -> the stages reading it
    for stage in stages:
        for key, path in stage.reads.items():
            if path is None or not _made_by(path, outputs):
                unmade.setdefault((key, path), []).append(stage.name)
    for (key, path), readers in unmade.items():
        by = f"stage{'s' if len(readers) > 1 else ''} {', '.join(readers)}"
        if path is None:
            if files:
                problems.append(
                    f"{key}: null, but {by} depend on that file (dvc.yaml tracks it); give the path of a local "
                    "checkpoint (`wsss weights fetch` downloads the official ones)"
                )
        elif (root / f"{path}.dvc").is_file():
            continue  # imported from another repository (`dvc import`): made elsewhere, tracked here
        elif path.startswith("artifacts/"):
            problems.append(
                f"{key}: {path} is read by {by} but no stage of these params makes it (nor is it imported: "
                f"no {path}.dvc)"
            )
        elif files and not (root / path).exists():
            hint = DESCRIPTIONS_HINT if key.startswith("describe.runs.") else ""
            problems.append(f"{key}: {path} (read by {by}) does not exist{hint}")
    return problems


def check_pipeline(params: dict[str, Any], *, files: bool = True, root: Path = Path(".")) -> None:
    """Raise ParamsError listing every problem of `pipeline_problems`."""
    problems = pipeline_problems(params, files=files, root=root)
    if problems:
        raise ParamsError("; ".join(problems) if len(problems) == 1 else "\n  " + "\n  ".join(problems))
