"""Make torchvision importable beside a CPU-only torch, and open_clip quick to import.

Some package indexes only carry a CUDA build of torchvision. Beside a CPU-only torch its compiled
extension cannot load (it needs libc10_cuda.so), and `import torchvision` then fails inside its own
meta registrations with "operator torchvision::nms does not exist". open_clip and segment-anything
both import torchvision, so this must be handled before either is imported.

`ensure_torchvision()` first tries the compiled extension. Only if that fails does it define the two
operators torchvision registers fake kernels for (`nms`, `qnms`) with a CPU implementation written
in torch, and make `nms` skip its compiled-ops check. Everything else falls back to torchvision's own
Python paths (roi_align has one); image decoding in torchvision.io does not work, use PIL. Where the
extension loads normally this function changes nothing.

`import_open_clip()` does the same for open_clip and leaves Hugging Face transformers out of its import.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

import torch

# The operator library must stay referenced for its registrations to live.
_library: torch.library.Library | None = None


def _compiled_extension_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.submodule_search_locations is None:
        return True  # not installed: nothing to fix, the import error will speak for itself
    package_dir = list(spec.submodule_search_locations)[0]
    candidates = glob.glob(os.path.join(package_dir, "_C*.so")) + glob.glob(os.path.join(package_dir, "_C*.pyd"))
    if not candidates:
        return False
    try:
        torch.ops.load_library(candidates[0])
    except (OSError, RuntimeError):
        return False
    return True


def nms_cpu(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression with torchvision's semantics (indices sorted by score)."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    boxes = boxes.float()
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = torch.sort(scores, descending=True, stable=True).indices
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    keep = []
    for rank in range(len(order)):
        if suppressed[rank]:
            continue
        i = order[rank]
        keep.append(i)
        rest = order[rank + 1 :]
        xx1 = torch.maximum(x1[i], x1[rest])
        yy1 = torch.maximum(y1[i], y1[rest])
        xx2 = torch.minimum(x2[i], x2[rest])
        yy2 = torch.minimum(y2[i], y2[rest])
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rank + 1 :] |= iou > iou_threshold
    return torch.stack(keep)


def ensure_torchvision() -> None:
    """Call before the first `import torchvision` (directly or through open_clip / segment_anything)."""
    global _library
    if _library is not None or "torchvision" in sys.modules or _compiled_extension_loads():
        return
    _library = torch.library.Library("torchvision", "DEF")
    _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.impl("nms", nms_cpu, "CPU")

    import torchvision.ops.boxes

    # nms asks whether the compiled ops loaded before calling them; ours are registered above.
    torchvision.ops.boxes._assert_has_ops = lambda: None


def import_open_clip() -> None:
    """Import open_clip with torchvision made importable and without Hugging Face transformers.

    open_clip imports transformers (about a second of every CLIP stage's start) only for Hugging Face text towers,
    which `load_clip` refuses, and its hf_model module carries on with `transformers = None` when that import fails.
    A process that has imported transformers already (for diffusers' pipelines) keeps it, and tokenizers that need
    transformers still import it when they are built. Call before the first `import open_clip`.
    """
    ensure_torchvision()
    if "open_clip" in sys.modules:
        return
    blocked = "transformers" not in sys.modules
    if blocked:
        sys.modules["transformers"] = None  # `import transformers` now raises ImportError
    try:
        import open_clip  # noqa: F401
    finally:
        if blocked and sys.modules.get("transformers", False) is None:
            del sys.modules["transformers"]
