"""The demo report: one table of every evaluated artifact and one picture of a few images through the pipeline.

`reports/demo.md` lists each `metrics/<name>/` directory the evaluate stages wrote (seeds on the training split,
predictions on the eval split) with mIoU, precision, recall and coverage; the all-background baseline of each split;
the IoU of every class; then, apart, the oracle figures whose background was chosen by looking at GT, and which CLIP
weights the CAMs came from. `reports/demo.png` shows, for the first images of each split: the image, its GT, the
CAMs behind the evaluated seeds, and every evaluated label map.

Nothing is hard-wired to particular stages: the rows and the panels come from the metrics directories present (and
their provenance), so a stage added later (SAMS seeds, a retrained segmenter) appears without a change here.
Both files are byte-identical for identical inputs (no timestamps, no software stamp in the PNG).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsss_core.audit import PROVENANCE_FILE, read_provenance
from wsss_core.data.base import IGNORE_INDEX, read_image, read_mask
from wsss_core.data.index import read_index
from wsss_core.data.voc import voc_palette
from wsss_core.metrics.report import METRICS_FILE, PER_CLASS_FILE
from wsss_core.params import ParamsError
from wsss_core.store.atomic import atomic_file
from wsss_core.store.dense import DenseMaps
from wsss_core.store.table import ArtifactError

PANEL_INCHES = 1.25
CAM_OPACITY = 0.55  # heat map over the image: enough to read both


@dataclass(frozen=True)
class EvaluatedArtifact:
    """One evaluated label-map artifact: its metrics and what it was computed from (from provenance)."""

    name: str
    metrics: dict[str, Any]
    labels: Path
    index: Path
    cams: Path | None
    split: str
    per_class: list[dict[str, str]]  # rows of per_class.csv (class, iou, ..., gt_pixels); empty when absent


def pipeline_order(params: dict[str, Any]) -> list[str]:
    """Names of the metrics directories the pipeline's stages write, in pipeline order (seeds, then predictions)."""
    seeds = params["seeds"]
    names = [f"seeds_{name}" for name in seeds["variants"]]
    names += [f"seeds_{name}" for name in seeds.get("sams", {}).get("variants", {})]
    names += [f"predictions_{name}" for name in params.get("retrain", {}).get("predict", {}).get("variants", {})]
    return names


def find_evaluated(metrics_root: str | Path, order: Sequence[str] = ()) -> list[EvaluatedArtifact]:
    """Every `metrics_root/<name>/` written by the evaluate stage: names listed in `order` first, the rest sorted."""
    metrics_root = Path(metrics_root)
    found = {}
    for directory in sorted(metrics_root.glob(f"*/{METRICS_FILE}")):
        directory = directory.parent
        if not (directory / PROVENANCE_FILE).is_file():
            continue
        provenance = read_provenance(directory)
        if provenance.get("stage") != "evaluate":
            continue
        upstream = provenance.get("upstream", {})
        missing = [key for key in ("labels", "index") if key not in upstream]
        if missing:
            raise ArtifactError(f"{directory / PROVENANCE_FILE}: names no {missing[0]} artifact upstream")
        cams = upstream.get("cams")
        found[directory.name] = EvaluatedArtifact(
            name=directory.name,
            metrics=json.loads((directory / METRICS_FILE).read_text()),
            labels=Path(upstream["labels"]["path"]),
            index=Path(upstream["index"]["path"]),
            cams=Path(cams["path"]) if cams else None,
            split=provenance.get("details", {}).get("split", "?"),
            per_class=_read_per_class(directory / PER_CLASS_FILE),
        )
    ranked = [name for name in order if name in found] + sorted(set(found) - set(order))
    return [found[name] for name in ranked]


def _read_per_class(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in ("class", "iou", "gt_pixels") if column not in (reader.fieldnames or ())]
        if missing:
            raise ArtifactError(f"{path}: no {missing[0]!r} column")
        return list(reader)


def all_background_miou(per_class: Sequence[dict[str, str]]) -> float | None:
    """mIoU of predicting background (the first class) everywhere, from the GT pixel counts of a per-class table.

    Its background IoU is the background's share of the labelled pixels and every other class scores 0, averaged
    over the classes the GT holds: the figure any method has to beat, and a yardstick for "far above chance".
    """
    counts = [int(row["gt_pixels"]) for row in per_class]
    if not counts or sum(counts) == 0:
        return None
    return counts[0] / sum(counts) / sum(count > 0 for count in counts)


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _per_class_lines(results: Sequence[EvaluatedArtifact]) -> list[str]:
    """IoU per class, one row per artifact: shows which classes a step helps, which a mean hides."""
    tabled = [result for result in results if result.per_class]
    if not tabled:
        return []
    classes = [row["class"] for row in tabled[0].per_class]
    lines = [
        "",
        "## IoU per class (%)",
        "",
        "| artifact | split | " + " | ".join(classes) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in classes) + " |",
    ]
    for result in tabled:
        iou = {row["class"]: row["iou"] for row in result.per_class}
        cells = [_percent(float(iou[name])) if iou.get(name) else "-" for name in classes]
        lines.append(f"| `{result.name}` | {result.split} | " + " | ".join(cells) + " |")
    return lines


def _clip_description(results: Sequence[EvaluatedArtifact]) -> list[str]:
    """Which CLIP weights the CAMs came from, one line per distinct source (read from the CAM artifacts)."""
    lines = []
    for cams in dict.fromkeys(result.cams for result in results if result.cams is not None):
        record = read_provenance(cams).get("checkpoints", {}).get("clip")
        if not record:
            continue
        if record.get("random_init"):
            source = f"random weights (seed {record.get('seed')}): these CAMs are those of random features"
        elif record.get("checkpoint"):
            source = f"`{record['checkpoint']['path']}` (sha256 {record['checkpoint']['sha256'][:12]})"
        else:
            source = f"open_clip pretrained tag `{record.get('pretrained')}`"
        line = f"- CLIP `{record.get('arch')}`: {source}"
        if line not in lines:
            lines.append(line)
    return lines


def metrics_markdown(results: Sequence[EvaluatedArtifact], picture: str | None = None) -> str:
    """The report text: the headline table, the GT-selected (oracle) figures apart, the CLIP used, the picture."""
    lines = [
        "# Demo report",
        "",
        "Every evaluated artifact of this run (`metrics/<name>/metrics.json`). Seeds are scored on the split they were",
        "made for, predictions on the eval split; one confusion matrix per split, GT 255 ignored. Figures in %.",
        "",
        "| artifact | split | images | mIoU | precision | recall | coverage |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        metrics = result.metrics
        cells = [
            f"`{result.name}`",
            result.split,
            str(metrics.get("n_images", "-")),
            _percent(metrics.get("miou")),
            _percent(metrics.get("mean_precision")),
            _percent(metrics.get("mean_recall")),
            _percent(metrics.get("coverage")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    baselines = {}
    for result in results:
        if result.split not in baselines and result.per_class:
            baselines[result.split] = all_background_miou(result.per_class)
    known = [f"{split} {_percent(value)}" for split, value in baselines.items() if value is not None]
    if known:
        lines += ["", f"All-background baseline (mIoU of calling every pixel background): {', '.join(known)}."]
    lines += _per_class_lines(results)
    oracles = [result for result in results if result.metrics.get("oracle")]
    if oracles:
        lines += [
            "",
            "## Oracle figures: background chosen WITH the ground truth (not a fair result)",
            "",
            "The best background power of the argmax seed rule, picked by scoring each candidate against the GT",
            "reported on (`selected_with_gt: true`). Shown for comparison with papers that do this, never as the",
            "headline figure.",
            "",
            "| artifact | CAMs | best power | mIoU (oracle) |",
            "| --- | --- | ---: | ---: |",
        ]
        for result in oracles:
            oracle = result.metrics["oracle"]
            lines.append(
                f"| `{result.name}` | `{oracle.get('cams')}` | {oracle.get('best_power')} | "
                f"{_percent(oracle.get('best_miou'))} |"
            )
    clip_lines = _clip_description(results)
    if clip_lines:
        lines += ["", "## CLIP weights behind the CAMs", "", *clip_lines]
    if picture:
        lines += ["", f"![image, GT, CAMs and label maps of a few demo images]({picture})"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------- picture


@dataclass(frozen=True)
class Panel:
    """One column of the picture: the image, its GT, a CAM artifact or a label-map artifact."""

    kind: str  # image | gt | cams | labels
    title: str
    path: Path | None = None


def _panels(results: Sequence[EvaluatedArtifact]) -> list[Panel]:
    panels = [Panel("image", "image"), Panel("gt", "ground truth")]
    for cams in dict.fromkeys(result.cams for result in results if result.cams is not None):
        panels.append(Panel("cams", cams.name.removesuffix(".zarr"), cams))
    for result in results:
        panels.append(Panel("labels", f"{result.name}\nmIoU {_percent(result.metrics.get('miou'))}", result.labels))
    return panels


def _colour_labels(labels: np.ndarray) -> np.ndarray:
    palette = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
    palette[IGNORE_INDEX] = 255  # white: unlabelled / ignored
    return palette[labels]


def _cam_overlay(image: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Max over the image's class CAMs as a jet heat map over the image (bilinear to image size)."""
    from matplotlib import colormaps

    height, width = image.shape[:2]
    strongest = maps.astype(np.float32).max(axis=0) if len(maps) else np.zeros(maps.shape[-2:], np.float32)
    if strongest.shape != (height, width):
        strongest = np.asarray(Image.fromarray(strongest).resize((width, height), Image.Resampling.BILINEAR))
    heat = colormaps["jet"](np.clip(strongest, 0.0, 1.0))[..., :3] * 255
    return np.clip((1 - CAM_OPACITY) * image + CAM_OPACITY * heat, 0, 255).astype(np.uint8)


def _panel_picture(panel: Panel, image_id: str, image: np.ndarray, gt: np.ndarray | None, opened: dict) -> np.ndarray:
    if panel.kind == "image":
        return image
    if panel.kind == "gt":
        return _colour_labels(gt) if gt is not None else np.full_like(image, 255)
    if panel.path not in opened:
        opened[panel.path] = DenseMaps(panel.path, kind=panel.kind)
    maps = opened[panel.path]
    data = maps[maps.index_of(image_id)]
    return _cam_overlay(image, data) if panel.kind == "cams" else _colour_labels(data)


def save_demo_figure(results: Sequence[EvaluatedArtifact], path: str | Path, images_per_split: int) -> Path:
    """Draw `images_per_split` images of each evaluated split, one row each, with a panel per artifact present."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups: dict[str, list[EvaluatedArtifact]] = {}
    for result in results:
        groups.setdefault(result.split, []).append(result)
    rows = []  # (split, panels, image id, sample, first row of its split)
    for split, members in groups.items():
        panels = _panels(members)
        samples = {sample.image_id: sample for sample in read_index(members[0].index).samples}
        image_ids = DenseMaps(members[0].labels, kind="labels").image_ids[:images_per_split]
        for position, image_id in enumerate(image_ids):
            if image_id not in samples:
                raise ArtifactError(f"{members[0].labels}: image {image_id!r} is not in the index {members[0].index}")
            rows.append((split, panels, image_id, samples[image_id], position == 0))
    columns = max(len(panels) for _, panels, *_ in rows)
    opened: dict[Path, DenseMaps] = {}
    with matplotlib.style.context("default"):  # the caller's rcParams must not change the bytes
        figure = Figure(figsize=(PANEL_INCHES * columns, (PANEL_INCHES + 0.3) * len(rows)), dpi=100)
        FigureCanvasAgg(figure)
        axes_grid = figure.subplots(len(rows), columns, squeeze=False)
        for row, (split, panels, image_id, sample, first) in enumerate(rows):
            image = read_image(sample.image_path)
            gt = read_mask(sample.mask_path) if sample.mask_path is not None else None
            for column, axes in enumerate(axes_grid[row]):
                axes.set_axis_off()
                if column >= len(panels):
                    continue
                panel = panels[column]
                axes.imshow(_panel_picture(panel, image_id, image, gt, opened), interpolation="nearest")
                if first:
                    axes.set_title(panel.title, fontsize=6)
                if column == 0:
                    axes.text(
                        -0.06,
                        0.5,
                        f"{split}\n{image_id}",
                        transform=axes.transAxes,
                        fontsize=5,
                        rotation=90,
                        ha="right",
                        va="center",
                    )
        figure.tight_layout(pad=0.3)
        with atomic_file(path) as handle:
            figure.savefig(handle, format="png", metadata={"Software": None})
    return Path(path)


def write_demo_report(
    metrics_root: str | Path,
    out_dir: str | Path,
    settings: dict[str, Any],
    order: Sequence[str] = (),
) -> dict[str, Path]:
    """Write `out_dir/demo.md` and `out_dir/demo.png` from the evaluated artifacts under `metrics_root`.

    `settings` is the demo_report params section: `images` per split in the picture, `artifacts` (metrics directory
    names to show; None: every one found, in `order` and then by name).
    """
    results = find_evaluated(metrics_root, order)
    if not results:
        raise ArtifactError(f"{metrics_root}: no evaluated artifacts (<name>/metrics.json); run the evaluate stages")
    if settings["artifacts"] is not None:
        available = {result.name: result for result in results}
        unknown = [name for name in settings["artifacts"] if name not in available]
        if unknown:
            raise ParamsError(f"demo.report.artifacts: {unknown[0]!r} was not evaluated; found: {', '.join(available)}")
        results = [available[name] for name in settings["artifacts"]]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    picture = save_demo_figure(results, out_dir / "demo.png", settings["images"])
    markdown = out_dir / "demo.md"
    with atomic_file(markdown, "w") as handle:
        handle.write(metrics_markdown(results, picture.name))
    return {"markdown": markdown, "picture": picture}
