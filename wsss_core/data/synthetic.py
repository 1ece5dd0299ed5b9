"""A small synthetic dataset in VOC layout: textured shapes on textured backgrounds.

It is the default pipeline's data and every test's: it needs no download, runs on a CPU in seconds, and still asks
the real question of WSSS (find *where* a class is, given only *that* it is there). Each class is a distinct shape
with a distinct texture ("a striped square", "a checkered star"), colours vary per object, backgrounds mix gradients,
smooth noise and a fine grating so that no colour threshold separates objects from background, and later objects
occlude earlier ones. Masks carry VOC's thin 255 "ignore" band along every object outline.

Every random draw comes from one numpy Generator per image, seeded by (seed, image number), and the files are
written by PIL without timestamps: the same arguments give byte-identical files.
"""

from __future__ import annotations

import colorsys
import math
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from wsss_core.data.base import IGNORE_INDEX, Dataset, DatasetError, read_class_names
from wsss_core.data.voc import load_voc, voc_palette

SYNTHETIC_CLASSES: tuple[str, ...] = ("background", "disc", "square", "triangle", "star", "ring", "cross")

# The texture that goes with each shape: two cues per class, as with real objects (shape and surface).
SYNTHETIC_TEXTURES: dict[str, str] = {
    "disc": "wavy",
    "square": "striped",
    "triangle": "dotted",
    "star": "checkered",
    "ring": "bricks",
    "cross": "crosshatched",
}

# The generator marks every folder it creates with this file, and replaces or removes only marked folders that hold
# nothing but what it writes: a user's dataset at the same path (a VOC tree has the same subfolder names) is never
# touched.
GENERATED_MARKER = ".wsss_generated"
_MARKER_TEXT = "written by wsss_core.data.synthetic.generate_synthetic; may be replaced by a new generation\n"
_GENERATED_NAMES = {"JPEGImages", "SegmentationClass", "Annotations", "ImageSets", "classes.txt", GENERATED_MARKER}
_PLACEMENT_ATTEMPTS = 40
_MIN_VISIBLE_FRACTION = 0.4  # an occluded object keeps at least this share of its area, so it stays recognisable


def _outline(owner: np.ndarray) -> np.ndarray:
    """Pixels that touch a 4-neighbour showing a different object (or background): a band two pixels wide."""
    edge = np.zeros(owner.shape, dtype=bool)
    vertical = owner[1:, :] != owner[:-1, :]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    horizontal = owner[:, 1:] != owner[:, :-1]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    """Vertices at evenly spaced angles starting at `angle`, at the given distances from the centre."""
    step = 2 * math.pi / len(radii)
    return [(cx + r * math.cos(angle + i * step), cy + r * math.sin(angle + i * step)) for i, r in enumerate(radii)]


def _shape(name: str, size: tuple[int, int], cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Boolean HxW mask of one shape of circumradius r centred at (cx, cy), rotated by `angle`."""
    height, width = size
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if name == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        inner = 0.55 * r
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    elif name == "square":
        draw.polygon(_polygon(cx, cy, [r] * 4, angle), fill=1)
    elif name == "triangle":
        draw.polygon(_polygon(cx, cy, [r] * 3, angle), fill=1)
    elif name == "star":
        draw.polygon(_polygon(cx, cy, [r, 0.45 * r] * 5, angle), fill=1)
    elif name == "cross":
        arm = 0.3 * r
        local = [(arm, r), (arm, arm), (r, arm), (r, -arm), (arm, -arm), (arm, -r)]
        local += [(-x, -y) for x, y in local]
        cos, sin = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in local], fill=1)
    else:
        raise ValueError(f"unknown synthetic shape '{name}'")
    return np.asarray(canvas, dtype=bool)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    hue, saturation, value = rng.uniform(0, 1), rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value), dtype=np.float32) * 255


def _texture(name: str, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Full-frame HxWx3 float image of one texture in a random colour; the shape mask cuts it out."""
    colour = _random_colour(rng)
    dark = colour * 0.25
    pale = colour * 0.3 + 170
    angle = rng.uniform(0, math.pi)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    # Every texture is periodic at a few pixels, so an 8-pixel patch tells it apart. (A shaded solid and random
    # speckle were tried for the disc and the ring: their CAMs scored no better than chance against the background.)
    if name == "striped":
        on = (np.floor(u / rng.uniform(4, 7)) % 2).astype(bool)
    elif name == "wavy":
        wavelength, period = rng.uniform(9, 12), rng.uniform(3, 4)
        on = (np.floor((u + 3 * np.sin(v * 2 * math.pi / wavelength)) / period) % 2).astype(bool)
    elif name == "dotted":
        spacing = rng.uniform(5, 7)
        du, dv = u % spacing - spacing / 2, v % spacing - spacing / 2
        on = du**2 + dv**2 < (0.32 * spacing) ** 2
        return np.where(on[..., None], colour, pale)
    elif name == "checkered":
        cell = rng.uniform(4, 7)
        on = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(bool)
        return np.where(on[..., None], colour, pale)
    elif name == "bricks":
        course = rng.uniform(5, 7)  # brick height; bricks are 2.2 courses long, every other row offset by half
        length = 2.2 * course
        row = np.floor(v / course)
        on = (v % course < 1.5) | ((u + (row % 2) * length / 2) % length < 1.5)
    elif name == "crosshatched":
        spacing = rng.uniform(4, 6)
        on = (u % spacing < 1.5) | (v % spacing < 1.5)
    else:
        raise ValueError(f"unknown synthetic texture '{name}'")
    return np.where(on[..., None], colour, dark)


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A gradient between two random colours, plus smooth blotches, plus a faint fine grating (like fabric)."""
    height, width = xx.shape
    low, high = rng.uniform(20, 235, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = xx * math.cos(angle) + yy * math.sin(angle)
    ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
    image = low + (high - low) * ramp[..., None]

    grid = int(rng.integers(3, 8))
    coarse = rng.normal(0, 1, size=(3, grid, grid)).astype(np.float32)
    blotches = [np.asarray(Image.fromarray(c).resize((width, height), Image.Resampling.BICUBIC)) for c in coarse]
    image += np.stack(blotches, axis=-1) * rng.uniform(15, 35)

    period, grating_angle = rng.uniform(2.5, 6), rng.uniform(0, math.pi)
    grating = np.sin(2 * math.pi * (xx * math.cos(grating_angle) + yy * math.sin(grating_angle)) / period)
    return image + grating[..., None] * rng.uniform(4, 14)


def _render(
    rng: np.random.Generator, size: tuple[int, int], first_class: int, min_objects: int, max_objects: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, tuple[int, int, int, int]]]]:
    """One scene: RGB uint8 image, class-index mask with 255 outlines, and (class, 1-based VOC box) per object."""
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    num_classes = len(SYNTHETIC_CLASSES)
    min_pixels = max(12, int(0.01 * height * width))
    owner = np.full(size, -1, dtype=np.int16)  # index of the object each pixel shows; -1 = background
    classes: list[int] = []
    areas: list[int] = []
    for k in range(int(rng.integers(min_objects, max_objects + 1))):
        class_index = first_class if k == 0 else int(rng.integers(1, num_classes))
        for _ in range(_PLACEMENT_ATTEMPTS):
            r = rng.uniform(0.12, 0.28) * min(height, width)
            cx, cy = rng.uniform(0.3 * r, width - 0.3 * r), rng.uniform(0.3 * r, height - 0.3 * r)
            shape = _shape(SYNTHETIC_CLASSES[class_index], size, cx, cy, r, rng.uniform(0, 2 * math.pi))
            candidate = owner.copy()
            candidate[shape] = k
            # Accept only if every object (old and new) keeps enough pixels off the ignore outline: then the mask
            # holds exactly the classes the XML lists.
            inside = np.bincount(candidate[~_outline(candidate)].ravel() + 1, minlength=k + 2)[1:]
            wanted = [max(min_pixels, _MIN_VISIBLE_FRACTION * area) for area in [*areas, int(shape.sum())]]
            if all(count >= need for count, need in zip(inside, wanted, strict=True)):
                owner = candidate
                classes.append(class_index)
                areas.append(int(shape.sum()))
                break
        else:
            if k < min_objects:
                raise DatasetError(f"cannot place {min_objects} objects in a {height}x{width} image; lower min_objects")
            break

    image = _background(rng, yy, xx)
    for k, class_index in enumerate(classes):
        texture = _texture(SYNTHETIC_TEXTURES[SYNTHETIC_CLASSES[class_index]], rng, yy, xx)
        image[owner == k] = texture[owner == k]
    image += rng.normal(0, 3, size=image.shape)  # sensor noise
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    mask = np.array([0, *classes], dtype=np.uint8)[owner + 1]
    mask[_outline(owner)] = IGNORE_INDEX
    boxes = []
    for k, class_index in enumerate(classes):
        rows, cols = np.nonzero(owner == k)
        box = (int(cols.min()) + 1, int(rows.min()) + 1, int(cols.max()) + 1, int(rows.max()) + 1)
        boxes.append((class_index, box))
    return image, mask, boxes


def render_scene(
    seed: Sequence[int], image_size: tuple[int, int], first_class: int, min_objects: int, max_objects: int
) -> tuple[np.ndarray, np.ndarray]:
    """One scene drawn like the dataset's, from its own seed sequence: RGB uint8 image and its class mask.

    For images outside the dataset (e.g. pretraining a demo CLIP, whose captions name the classes in view). The mask
    holds class ids with 255 along the outlines, as the dataset's; `first_class` (1..6) is the first object's class.
    """
    rng = np.random.default_rng(list(seed))
    image, mask, _ = _render(rng, tuple(image_size), first_class, min_objects, max_objects)
    return image, mask


def render_closeup(seed: Sequence[int], image_size: tuple[int, int], class_index: int) -> np.ndarray:
    """A close-up: one object of `class_index` (1..6) filling most of the frame, on a background like the dataset's.

    Same shapes, textures and backgrounds as the scenes, seen from nearer (circumradius 30-45% of the short side,
    centre near the middle): the RGB uint8 image of a "photo of a striped square".
    """
    if not 1 <= class_index < len(SYNTHETIC_CLASSES):
        raise ValueError(f"class_index must lie in 1..{len(SYNTHETIC_CLASSES) - 1}, got {class_index}")
    rng = np.random.default_rng(list(seed))
    height, width = (int(side) for side in image_size)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = _background(rng, yy, xx)
    short = min(height, width)
    radius = rng.uniform(0.3, 0.45) * short
    cx = width / 2 + rng.uniform(-0.15, 0.15) * short
    cy = height / 2 + rng.uniform(-0.15, 0.15) * short
    name = SYNTHETIC_CLASSES[class_index]
    shape = _shape(name, (height, width), cx, cy, radius, rng.uniform(0, 2 * math.pi))
    texture = _texture(SYNTHETIC_TEXTURES[name], rng, yy, xx)
    image[shape] = texture[shape]
    image += rng.normal(0, 3, size=image.shape)  # sensor noise, as in the scenes
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _annotation_xml(image_id: str, size: tuple[int, int], boxes: list[tuple[int, tuple[int, int, int, int]]]) -> str:
    height, width = size
    lines = [
        "<annotation>",
        "\t<folder>synthetic</folder>",
        f"\t<filename>{image_id}.jpg</filename>",
        f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>",
        "\t<segmented>1</segmented>",
    ]
    for class_index, (xmin, ymin, xmax, ymax) in boxes:
        truncated = int(xmin == 1 or ymin == 1 or xmax == width or ymax == height)
        lines += [
            "\t<object>",
            f"\t\t<name>{SYNTHETIC_CLASSES[class_index]}</name>",
            "\t\t<pose>Unspecified</pose>",
            f"\t\t<truncated>{truncated}</truncated>",
            "\t\t<difficult>0</difficult>",
            f"\t\t<bndbox>\n\t\t\t<xmin>{xmin}</xmin>\n\t\t\t<ymin>{ymin}</ymin>"
            f"\n\t\t\t<xmax>{xmax}</xmax>\n\t\t\t<ymax>{ymax}</ymax>\n\t\t</bndbox>",
            "\t</object>",
        ]
    return "\n".join([*lines, "</annotation>", ""])


def _check_replaceable(root: Path) -> None:
    """Refuse, naming the path, unless `root` is absent or a folder this generator created and nobody added to."""
    if not root.exists() and not root.is_symlink():
        return
    if root.is_symlink() or not root.is_dir():
        raise DatasetError(f"{root}: exists and is not a folder the demo generator created; it will not replace it")
    if not (root / GENERATED_MARKER).is_file():
        raise DatasetError(
            f"{root}: exists and was not created by the demo generator (no {GENERATED_MARKER} marker); it will not "
            "replace it. Point the generator at a new path, or remove the folder yourself if it is disposable."
        )
    foreign = sorted(path.name for path in root.iterdir() if path.name not in _GENERATED_NAMES)
    if foreign:
        raise DatasetError(f"{root}: will not replace a folder holding files the generator did not write: {foreign}")


def generate_synthetic(
    root: str | Path,
    n_train: int = 64,
    n_val: int = 32,
    image_size: tuple[int, int] = (128, 128),
    seed: int = 0,
    min_objects: int = 1,
    max_objects: int = 3,
) -> Path:
    """Write a synthetic VOC-layout dataset to `root` and return `root`.

    Files: JPEGImages/{id}.jpg (quality 95), SegmentationClass/{id}.png (VOC-palette PNG, classes 0..6, 255 on
    object outlines), Annotations/{id}.xml (object names and boxes), ImageSets/Segmentation/{train,val,train_aug}.txt
    (train_aug = train) and classes.txt (foreground names). Ids run syn_000001, syn_000002, ... over train then val.
    The class of each image's first object cycles through all classes, so any 6 consecutive images show every one.

    The dataset is built beside `root` and renamed into place, so an interrupted run leaves no half dataset. Every
    folder it creates carries a `.wsss_generated` marker; an existing `root` (or a leftover `.{name}.partial`) is
    replaced only if it holds that marker and nothing but a previous generation's files. Anything else, a user's
    dataset above all, is refused with its path named and left untouched.

    Arguments:
      root: output folder.
      n_train, n_val: number of images in each split (at least 1).
      image_size: (height, width) in pixels, each at least 32.
      seed: the whole dataset is a function of the arguments; change the seed for a different draw.
      min_objects, max_objects: objects per image, drawn uniformly in this range.
    """
    if n_train < 1 or n_val < 1:
        raise DatasetError(f"n_train and n_val must be at least 1, got {n_train} and {n_val}")
    height, width = (int(side) for side in image_size)
    if min(height, width) < 32:
        raise DatasetError(f"image_size must be at least 32x32, got {image_size}")
    if not 1 <= min_objects <= max_objects:
        raise DatasetError(f"need 1 <= min_objects <= max_objects, got {min_objects} and {max_objects}")
    root = Path(root).expanduser()
    _check_replaceable(root)
    partial = root.parent / f".{root.name}.partial"
    if partial.is_dir() and not partial.is_symlink() and not any(partial.iterdir()):
        partial.rmdir()  # killed between creating our scratch and marking it
    if partial.exists() or partial.is_symlink():
        _check_replaceable(partial)
        shutil.rmtree(partial)  # our own scratch from an interrupted run
    partial.mkdir(parents=True)
    (partial / GENERATED_MARKER).write_text(_MARKER_TEXT)  # first, so an interrupted run's scratch is ours to remove
    for folder in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (partial / folder).mkdir(parents=True)

    palette = voc_palette()
    image_ids = [f"syn_{number:06d}" for number in range(1, n_train + n_val + 1)]
    foreground = len(SYNTHETIC_CLASSES) - 1
    for position, image_id in enumerate(image_ids):
        rng = np.random.default_rng([seed, position])
        image, mask, boxes = _render(rng, (height, width), position % foreground + 1, min_objects, max_objects)
        Image.fromarray(image).save(partial / "JPEGImages" / f"{image_id}.jpg", format="JPEG", quality=95)
        mask_image = Image.fromarray(mask)
        mask_image.putpalette(palette)
        mask_image.save(partial / "SegmentationClass" / f"{image_id}.png", format="PNG")
        (partial / "Annotations" / f"{image_id}.xml").write_text(_annotation_xml(image_id, (height, width), boxes))

    lists = partial / "ImageSets" / "Segmentation"
    train_ids = "".join(f"{image_id}\n" for image_id in image_ids[:n_train])
    (lists / "train.txt").write_text(train_ids)
    (lists / "train_aug.txt").write_text(train_ids)
    (lists / "val.txt").write_text("".join(f"{image_id}\n" for image_id in image_ids[n_train:]))
    (partial / "classes.txt").write_text("".join(f"{name}\n" for name in SYNTHETIC_CLASSES[1:]))

    if root.exists():
        _check_replaceable(root)  # again: the folder may have appeared while we generated
        shutil.rmtree(root)
    partial.rename(root)
    return root


def load_synthetic(
    root: str | Path, split: str, label_source: str = "gt_masks", mask_dir: str | Path | None = None
) -> Dataset:
    """Load a generated dataset with the VOC loader, taking the class names from the classes.txt written beside it."""
    class_names = read_class_names(Path(root).expanduser() / "classes.txt")
    dataset = load_voc(root, split, label_source=label_source, mask_dir=mask_dir, class_names=class_names)
    return replace(dataset, name="synthetic")
