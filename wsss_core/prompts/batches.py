"""Training batches for prompt learning: which images, how they are augmented, and their labels.

Every batch is a pure function of (seed, iteration): the images come from a stream of per-epoch permutations and
each image's augmentation draws from its own generator seeded with (seed, iteration, slot). A run resumed from a
checkpoint at iteration i therefore sees exactly the batches an uninterrupted run sees from i on, and data-loading
workers cannot change the order.

Augmentation follows the FMA-WSSS training code (CoOp-style): colour jitter, a random rescale that brings the long
side to a random length in [288, 480] while keeping the short side at least 224, a random 224 x 224 crop and a
random horizontal flip. Seed labels (segmentation task) are rescaled with nearest neighbour alongside the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wsss_core.data.base import read_image

# The reference's colour jitter (alchemy_cat RandColorJitter defaults): each step with probability 0.5, in random
# order. Hue is shifted on PIL's 0..255 hue scale, as the reference shifts OpenCV's full-range hue.
BRIGHTNESS_DELTA = 25.0
CONTRAST_RANGE = (0.6, 1.4)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 25.0
JITTER_PROBABILITY = 0.5
IGNORE_INDEX = 255


@dataclass(frozen=True)
class AugmentSettings:
    """Training augmentation; defaults are the FMA-WSSS VOC settings."""

    color_jitter: bool = True
    long_side: tuple[int, int] = (288, 480)
    min_short_side: int = 224
    crop: int = 224
    flip: bool = True

    def __post_init__(self) -> None:
        low, high = self.long_side
        if not 1 <= low <= high:
            raise ValueError(f"long_side must be [low, high] with 1 <= low <= high, got {list(self.long_side)}")
        if self.min_short_side < self.crop:
            raise ValueError(f"min_short_side {self.min_short_side} must be >= crop {self.crop} so every crop fits")


def _saturate(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _shift_hsv(image: np.ndarray, channel: int, change) -> np.ndarray:
    hsv = np.asarray(Image.fromarray(image).convert("HSV"), dtype=np.float32)
    hsv[..., channel] = change(hsv[..., channel])
    height, width = image.shape[:2]
    return np.asarray(Image.frombytes("HSV", (width, height), _saturate(hsv).tobytes()).convert("RGB"))


def color_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast, saturation and hue changes of a uint8 RGB image (see the constants above)."""
    draws = [rng.random() < JITTER_PROBABILITY for _ in range(4)]
    brightness = rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)
    contrast = rng.uniform(*CONTRAST_RANGE)
    saturation = rng.uniform(*SATURATION_RANGE)
    hue = rng.uniform(-HUE_DELTA, HUE_DELTA)
    steps = [
        lambda x: _saturate(x.astype(np.float32) + brightness),
        lambda x: _saturate(x.astype(np.float32) * contrast),
        lambda x: _shift_hsv(x, 1, lambda s: s * saturation),
        lambda x: _shift_hsv(x, 0, lambda h: np.mod(h + hue, 256.0)),  # hue is circular
    ]
    for step in rng.permutation(4):
        if draws[step]:
            image = steps[step](image)
    return image


def rescale(
    image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator, settings: AugmentSettings
) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale so the long side becomes a random length in settings.long_side, unless that would make the short side
    shorter than settings.min_short_side (then the short side becomes exactly that). Bicubic image, nearest label."""
    target = int(rng.integers(settings.long_side[0], settings.long_side[1] + 1))
    height, width = image.shape[:2]
    factor = max(target / max(height, width), settings.min_short_side / min(height, width))
    size = (max(settings.crop, round(width * factor)), max(settings.crop, round(height * factor)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
    if label is not None:
        label = np.asarray(Image.fromarray(label).resize(size, Image.Resampling.NEAREST))
    return image, label


def augment(
    image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator, settings: AugmentSettings
) -> tuple[np.ndarray, np.ndarray | None]:
    """Jitter, rescale, crop settings.crop x settings.crop and flip an image (and its seed labels, if any)."""
    if label is not None and label.shape != image.shape[:2]:
        raise ValueError(f"seed labels of shape {label.shape} do not match the image's {image.shape[:2]}")
    if settings.color_jitter:
        image = color_jitter(image, rng)
    image, label = rescale(image, label, rng, settings)
    height, width = image.shape[:2]
    top = int(rng.integers(0, height - settings.crop + 1))
    left = int(rng.integers(0, width - settings.crop + 1))
    window = (slice(top, top + settings.crop), slice(left, left + settings.crop))
    image = image[window]
    label = None if label is None else label[window]
    if settings.flip and rng.random() < 0.5:
        image = image[:, ::-1]
        label = None if label is None else label[:, ::-1]
    return np.ascontiguousarray(image), None if label is None else np.ascontiguousarray(label)


def sample_indices(num_images: int, seed: int, start: int, count: int) -> np.ndarray:
    """Positions start..start+count-1 of the endless stream of per-epoch permutations of range(num_images)."""
    positions = np.arange(start, start + count)
    epochs, slots = np.divmod(positions, num_images)
    indices = np.empty(count, dtype=np.int64)
    for epoch in np.unique(epochs):
        order = np.random.default_rng([seed, int(epoch)]).permutation(num_images)
        chosen = epochs == epoch
        indices[chosen] = order[slots[chosen]]
    return indices


class TrainingBatches(torch.utils.data.Dataset):
    """Item i is the whole batch of iteration i: {"images" (B, 3, S, S) normalised, "present" (B, C) bool,
    "seeds" (B, S, S) int64 or absent}.

    Arguments:
      image_paths, image_labels: the training images and their image-level labels (class ids 1..C).
      num_foreground: C.
      batch_size, augment_settings, seed: as named.
      mean, std: CLIP's normalisation.
      seeds_path: a seeds artifact (segmentation task); its map for each image is augmented with the image.
      labels_from: "image" (image-level labels) or "seeds" (the classes left in the cropped seeds, as the
        reference's VOC segmentation task).
    """

    def __init__(
        self,
        image_ids: Sequence[str],
        image_paths: Sequence[Path],
        image_labels: Sequence[Sequence[int]],
        num_foreground: int,
        batch_size: int,
        augment_settings: AugmentSettings,
        seed: int,
        mean: Sequence[float],
        std: Sequence[float],
        seeds_path: Path | None = None,
        labels_from: str = "image",
    ) -> None:
        if labels_from not in ("image", "seeds"):
            raise ValueError(f"labels_from must be 'image' or 'seeds', got {labels_from!r}")
        if labels_from == "seeds" and seeds_path is None:
            raise ValueError("labels_from='seeds' needs seeds_path")
        if not image_paths:
            raise ValueError("no training images")
        self.image_ids = list(image_ids)
        self.image_paths = [Path(path) for path in image_paths]
        self.present = np.zeros((len(self.image_paths), num_foreground), dtype=bool)
        for row, labels in enumerate(image_labels):
            self.present[row, np.asarray(labels, dtype=np.int64) - 1] = True
        self.num_foreground = num_foreground
        self.batch_size = batch_size
        self.settings = augment_settings
        self.seed = seed
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.seeds_path = seeds_path
        self.labels_from = labels_from
        self._seed_maps = None  # opened on first use, in whichever process loads the batch

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_seed_maps"] = None
        return state

    def _seeds_of(self, index: int) -> np.ndarray:
        from wsss_core.store.dense import DenseMaps

        if self._seed_maps is None:
            self._seed_maps = DenseMaps(self.seeds_path, kind="labels")
        return np.asarray(self._seed_maps[self._seed_maps.index_of(self.image_ids[index])])

    def __len__(self) -> int:
        return 2**62  # endless: the sampler says which iterations to load

    def __getitem__(self, iteration: int) -> dict[str, torch.Tensor]:
        indices = sample_indices(len(self.image_paths), self.seed, iteration * self.batch_size, self.batch_size)
        images, seeds, present = [], [], []
        for slot, index in enumerate(indices):
            rng = np.random.default_rng([self.seed, iteration, slot])
            label = self._seeds_of(index) if self.seeds_path is not None else None
            image, label = augment(read_image(self.image_paths[index]), label, rng, self.settings)
            images.append((image.astype(np.float32) / 255.0 - self.mean) / self.std)
            if label is None:
                present.append(self.present[index])
                continue
            seeds.append(label.astype(np.int64))
            if self.labels_from == "seeds":
                in_crop = np.unique(label)
                in_crop = in_crop[(in_crop >= 1) & (in_crop <= self.num_foreground)]
                row = np.zeros(self.num_foreground, dtype=bool)
                row[in_crop - 1] = True
                present.append(row)
            else:
                present.append(self.present[index])
        batch = {
            "images": torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
            "present": torch.from_numpy(np.stack(present)),
        }
        if seeds:
            batch["seeds"] = torch.from_numpy(np.stack(seeds))
        return batch
