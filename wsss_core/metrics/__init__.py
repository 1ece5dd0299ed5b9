"""Evaluation: confusion matrices, mIoU summaries, report files and the GT-selected ("oracle") background sweep."""

from wsss_core.metrics.confusion import ConfusionAccumulator, confusion_matrix, summarize
from wsss_core.metrics.oracle import sweep_background
from wsss_core.metrics.report import write_report

__all__ = ["ConfusionAccumulator", "confusion_matrix", "summarize", "sweep_background", "write_report"]
