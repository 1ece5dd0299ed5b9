"""The CLIP-ES prompt vocabulary: class names with synonyms, background words, and the prompt template.

CLIP-ES (and the methods built on it: FMA-WSSS, ExCEL, DiCLIP) describe each foreground class with a few synonyms
joined into one string and contrast it with words for background stuff. The lists below follow CLIP-ES's released
vocabulary word for word, including its spellings, because its reported numbers were produced with them.
Foreground lists are in dataset class order: entry i names class i + 1 (class 0 is background).
"""

from __future__ import annotations

from collections.abc import Sequence

CLIP_ES_TEMPLATE = "a clean origami {}."

CLIP_ES_VOC_NAMES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird avian",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair seat",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person with clothes,people,human",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor screen",
)

CLIP_ES_COCO_NAMES: tuple[str, ...] = (
    "person with clothes,people,human",
    "bicycle",
    "car",
    "motorbike",
    "aeroplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird avian",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack,bag",
    "umbrella,parasol",
    "handbag,purse",
    "necktie",
    "suitcase",
    "frisbee",
    "skis",
    "sknowboard",  # sic: CLIP-ES's spelling for "snowboard", kept because its COCO results used it
    "sports ball",
    "kite",
    "baseball bat",
    "glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "dessertspoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair seat",
    "sofa",
    "pottedplant",
    "bed",
    "diningtable",
    "toilet",
    "tvmonitor screen",
    "laptop",
    "mouse",
    "remote control",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hairdrier,blowdrier",
    "toothbrush",
)

CLIP_ES_BACKGROUND_VOC: tuple[str, ...] = (
    "ground",
    "land",
    "grass",
    "tree",
    "building",
    "wall",
    "sky",
    "lake",
    "water",
    "river",
    "sea",
    "railway",
    "railroad",
    "keyboard",
    "helmet",
    "cloud",
    "house",
    "mountain",
    "ocean",
    "road",
    "rock",
    "street",
    "valley",
    "bridge",
    "sign",
)

# COCO has keyboards and signs among its objects, so CLIP-ES drops those two words from its background list.
CLIP_ES_BACKGROUND_COCO: tuple[str, ...] = tuple(
    word for word in CLIP_ES_BACKGROUND_VOC if word not in ("keyboard", "sign")
)


def prompts_for(names: Sequence[str], template: str = CLIP_ES_TEMPLATE) -> list[str]:
    """One prompt per name: `template` with its single "{}" replaced by the name."""
    if template.count("{}") != 1:
        raise ValueError(f"template {template!r} must contain exactly one '{{}}' placeholder")
    if isinstance(names, str) or not all(isinstance(name, str) and name.strip() for name in names):
        raise ValueError(f"names must be a list of non-empty strings, got {names!r}")
    return [template.replace("{}", name) for name in names]


# The words DiCLIP's cache generation puts in its prompts for VOC's classes (its README's category list).
DICLIP_VOC_WORDS: tuple[str, ...] = (
    "plane", "bicycle", "bird", "boat", "bottle", "buses", "car", "cat", "chair", "cow",
    "table", "dog", "horse", "motorbike", "people", "plant", "sheep", "sofa", "train", "monitor",
)  # fmt: skip

CLASS_WORD_CHOICES = ("dataset", "clip_es_voc", "clip_es_coco")
CACHE_WORD_CHOICES = ("dataset", "diclip_voc")
BACKGROUND_WORD_CHOICES = ("clip_es_voc", "clip_es_coco", "none")


def class_words(setting: str, class_names: Sequence[str], key: str) -> list[str]:
    """Words naming classes 1..C: the dataset's own names (`class_names` holds background first) or CLIP-ES's synonym
    lists, which must name as many classes as the dataset has. `key` names the param in the error."""
    from wsss_core.params import ParamsError

    words = {
        "dataset": list(class_names[1:]),
        "clip_es_voc": CLIP_ES_VOC_NAMES,
        "clip_es_coco": CLIP_ES_COCO_NAMES,
        "diclip_voc": DICLIP_VOC_WORDS,
    }
    chosen = list(words[setting])
    if len(chosen) != len(class_names) - 1:
        raise ParamsError(f"{key}: {setting!r} names {len(chosen)} classes, the dataset has {len(class_names) - 1}")
    return chosen


def background_vocabulary(setting: str) -> list[str]:
    """CLIP-ES's background words: 25 for VOC, 23 for COCO, or none."""
    return {"clip_es_voc": list(CLIP_ES_BACKGROUND_VOC), "clip_es_coco": list(CLIP_ES_BACKGROUND_COCO), "none": []}[
        setting
    ]


def run_prompts(settings: dict, class_names: Sequence[str], key: str) -> tuple[list[str], list[str]]:
    """(class prompts, background prompts) of a run's `class_names`, `background_words` and `template` settings for a
    dataset's classes (background first); `key` names the run in a class-count error."""
    words = class_words(settings["class_names"], class_names, f"{key}.class_names")
    return prompts_for(words, settings["template"]), prompts_for(
        background_vocabulary(settings["background_words"]), settings["template"]
    )
