"""Pictures of an image's masks: one panel per level, and one of the kept quasi-superpixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from wsss_core.masks import LEVEL_NAMES
from wsss_core.masks.records import ImageMasks

MIN_PANEL_WIDTH = 192


def mask_colours(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours, the same for every run (hues spaced by the golden ratio)."""
    import colorsys

    hues = (np.arange(n) * 0.618033988749895) % 1.0
    rgb = np.array([colorsys.hsv_to_rgb(h, 0.75, 1.0) for h in hues], dtype=np.float64).reshape(n, 3)
    return (rgb * 255).astype(np.uint8)


def paint_panel(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The image with each (M, H, W) mask filled in its colour, larger masks under smaller ones, outlines dark."""
    height, width = image.shape[:2]
    on_top = np.full((height, width), -1, dtype=np.int64)
    for i in np.argsort(-masks.reshape(len(masks), height * width).sum(axis=1), kind="stable"):
        on_top[masks[i]] = i
    colours = mask_colours(len(masks))
    covered = on_top >= 0
    panel = (image.astype(np.float32) * 0.45).astype(np.uint8)
    panel[covered] = (0.35 * image[covered] + 0.65 * colours[on_top[covered]]).astype(np.uint8)
    edge = np.zeros((height, width), dtype=bool)
    edge[:, 1:] |= on_top[:, 1:] != on_top[:, :-1]
    edge[1:, :] |= on_top[1:, :] != on_top[:-1, :]
    panel[edge & covered] = 20
    return panel


def overlay_picture(image: np.ndarray, masks: ImageMasks, title: str = "") -> Image.Image:
    """Panels: the image, the masks of each level (subpart, part, whole), and the kept quasi-superpixels."""
    dense = masks.masks
    panels = [("image", image)]
    for level, name in enumerate(LEVEL_NAMES):
        chosen = masks.level == level
        panels.append((f"{name} ({int(chosen.sum())})", paint_panel(image, dense[chosen])))
    panels.append((f"kept ({int(masks.kept.sum())})", paint_panel(image, dense[masks.kept])))

    height, width = image.shape[:2]
    zoom = max(1, -(-MIN_PANEL_WIDTH // width))
    header = 14
    sheet = Image.new("RGB", (len(panels) * width * zoom, height * zoom + header * 2), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((2, 1), title, fill="black")
    for i, (name, pixels) in enumerate(panels):
        picture = Image.fromarray(pixels).resize((width * zoom, height * zoom), Image.NEAREST)
        sheet.paste(picture, (i * width * zoom, header * 2))
        draw.text((i * width * zoom + 2, header), name, fill="black")
    return sheet


def write_overlays(split_dir: Path, image_paths: dict[str, Path], out_dir: Path, count: int) -> list[Path]:
    """Overlay pictures of the first `count` images of a mask artifact split, as `out_dir/<split>_<image>.png`."""
    from wsss_core.data.base import read_image
    from wsss_core.masks.records import MaskSet

    mask_set = MaskSet(split_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for image_id in mask_set.image_ids[:count]:
        masks = mask_set.read(image_id, kept_only=False)
        picture = overlay_picture(read_image(image_paths[image_id]), masks, f"{split_dir.name} {image_id}")
        path = out_dir / f"{split_dir.name}_{image_id}.png"
        picture.save(path)
        written.append(path)
    return written
