"""Evaluation report files: metrics.json (for `dvc metrics`), per_class.csv (for `dvc plots`), confusion.png.

Every file is byte-identical for identical inputs (no timestamps or version strings) and is written under a
temporary name then renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from wsss_core.metrics.confusion import summarize

SUMMARY_KEYS = (
    "miou",
    "pixel_accuracy",
    "mean_precision",
    "mean_recall",
    "coverage",
    "fp_over_tp",
    "num_classes_in_gt",
)
METRICS_FILE = "metrics.json"
PER_CLASS_FILE = "per_class.csv"
PER_CLASS_COLUMNS = ("class", "iou", "precision", "recall", "fp_over_tp", "gt_pixels", "pred_pixels")
DECIMALS = 6
# Above this many classes the heatmap cells get too small to print numbers in.
MAX_ANNOTATED_CLASSES = 25


def _rounded(value):
    """JSON-ready copy of `value` with floats rounded to DECIMALS places and NaN as None."""
    if isinstance(value, dict):
        return {str(key): _rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else round(float(value), DECIMALS)
    return value


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _metrics_json(summary: dict, extra: dict) -> str:
    scalars = {key: summary[key] for key in SUMMARY_KEYS}
    collisions = sorted(set(scalars) & set(extra))
    if collisions:
        raise ValueError(f"extra metrics would overwrite computed ones: {', '.join(collisions)}")
    scalars.update(extra)
    return json.dumps(_rounded(scalars), sort_keys=True, indent=2, allow_nan=False) + "\n"


def _per_class_csv(summary: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PER_CLASS_COLUMNS)
    for row in summary["per_class"]:
        cells = []
        for column in PER_CLASS_COLUMNS:
            value = row[column]
            if value is None:
                cells.append("")
            elif isinstance(value, float):
                cells.append(f"{value:.{DECIMALS}f}")
            else:
                cells.append(str(value))
        writer.writerow(cells)
    return buffer.getvalue()


def _row_normalised(matrix: np.ndarray) -> np.ndarray:
    totals = matrix.sum(axis=1, keepdims=True).astype(np.float64)
    out = np.zeros(matrix.shape, dtype=np.float64)
    np.divide(matrix, totals, out=out, where=totals > 0)
    return out


def _save_confusion_png(path: Path, matrix: np.ndarray, class_names: Sequence[str], title: str) -> None:
    # Figure + Agg canvas directly (no pyplot): no global figure state, no display backend needed.
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    num_classes = matrix.shape[0]
    fractions = _row_normalised(matrix)
    annotate = num_classes <= MAX_ANNOTATED_CLASSES
    cell_inches = 0.45 if annotate else 0.18
    side = max(4.0, cell_inches * (num_classes + 1) + 2.5)
    tick_size = 8 if annotate else 6

    with matplotlib.style.context("default"):  # the caller's rcParams must not change the bytes
        figure = Figure(figsize=(side + 1.0, side), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
        figure.colorbar(image, ax=axes, fraction=0.04, pad=0.02, label="fraction of GT pixels")
        axes.set_xticks(range(num_classes + 1), [*class_names, "unlabelled"], rotation=90, fontsize=tick_size)
        axes.set_yticks(range(num_classes), list(class_names), fontsize=tick_size)
        axes.set_xlabel("prediction")
        axes.set_ylabel("ground truth")
        axes.set_title(title or "Confusion matrix (rows normalised)")
        if annotate:
            for row in range(num_classes):
                for column in range(num_classes + 1):
                    fraction = fractions[row, column]
                    colour = "white" if fraction > 0.5 else "black"
                    axes.text(column, row, f"{fraction:.2f}", ha="center", va="center", fontsize=6, color=colour)
        figure.tight_layout()
        figure.savefig(path, format="png", metadata={"Software": None})


def write_report(
    out_dir: Path, matrix: np.ndarray, class_names: Sequence[str], *, extra: dict | None = None, title: str = ""
) -> dict:
    """Write metrics.json, per_class.csv and confusion.png for a (C, C + 1) confusion matrix into `out_dir`.

    metrics.json holds the summary scalars plus everything in `extra` (e.g. n_images, an "oracle" sub-dict),
    floats rounded to 6 decimals. Returns the full `summarize` dict with `extra` merged in.
    """
    extra = dict(extra or {})
    summary = summarize(matrix, class_names)
    metrics_text = _metrics_json(summary, extra)
    per_class_text = _per_class_csv(summary)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(
        out_dir / METRICS_FILE, lambda path: path.write_text(metrics_text, encoding="utf-8", newline="\n")
    )
    _write_atomically(
        out_dir / PER_CLASS_FILE, lambda path: path.write_text(per_class_text, encoding="utf-8", newline="\n")
    )
    _write_atomically(
        out_dir / "confusion.png", lambda path: _save_confusion_png(path, np.asarray(matrix), class_names, title)
    )
    return {**summary, **extra}
