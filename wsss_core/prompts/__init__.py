"""Text prompts for CLIP: the CLIP-ES vocabulary (here) and learnable context prompts (`wsss_core.prompts.context`,
imported on its own because it loads torch and open_clip)."""

from wsss_core.prompts.vocabulary import (
    CLIP_ES_BACKGROUND_COCO,
    CLIP_ES_BACKGROUND_VOC,
    CLIP_ES_COCO_NAMES,
    CLIP_ES_TEMPLATE,
    CLIP_ES_VOC_NAMES,
    prompts_for,
)

__all__ = [
    "CLIP_ES_BACKGROUND_COCO",
    "CLIP_ES_BACKGROUND_VOC",
    "CLIP_ES_COCO_NAMES",
    "CLIP_ES_TEMPLATE",
    "CLIP_ES_VOC_NAMES",
    "prompts_for",
]
