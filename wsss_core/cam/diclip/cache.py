"""TSA's SD key-value cache: what images to draw, and the keys and values pooled from them.

DiCLIP draws single-class images with Stable Diffusion (maintain_kv_cache/SD_generate_imgs), labels each with its
own training-free CAM pipeline (patch-text CAM, CAA at 0.79, 10 rounds of recursive refinement; the cache does not
exist yet, so no retrieval), and pools the fused CLIP's final tokens under each image's foreground and background
(maintain_kv_cache/generate_kv_cache.py):

  - the label map is brought to CLIP's token grid with nearest-neighbour resizing; foreground = label > 0;
  - a region's key is the mean of its patch tokens, as the CAM sees them (normalised over the tokens, not
    L2-normalised); an image whose region is empty gives no key for it;
  - per class, KMeans (scikit-learn, `random_state`) over its images' foreground keys gives `clusters` keys (DiCLIP:
    10 VOC, 5 COCO); the background keys of every image give `background_clusters` (25) more;
  - values are one-hot over [background, classes]: the key's class. The text weighting happens at retrieval
    (retrieval.py), so the stored values stay one-hot, as the reference stores them.
Keys are stored background first, then class by class, as float32 (the reference's float64 centres cannot be
multiplied with its float32 features).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from wsss_core.store.table import ArtifactError

KEYS_TABLE = "keys.parquet"


@dataclass(frozen=True)
class CacheImage:
    """One image to draw: `image_id`, its class (1..C), the word naming it in the prompt, the prompt, its seed."""

    image_id: str
    class_id: int
    word: str
    prompt: str
    seed: int


def cache_plan(
    words: Sequence[str],
    images_per_class: int,
    *,
    template: str,
    overrides: dict[str, str],
    seed: int,
) -> list[CacheImage]:
    """`images_per_class` images for each class (word i names class i + 1), class by class. Image j of the plan gets
    seed `seed + j`, so each image is reproducible on its own; a word in `overrides` gets that prompt instead of the
    template's (DiCLIP's "people" and "buses")."""
    plan = []
    for class_index, word in enumerate(words):
        prompt = overrides.get(word, template.replace("{}", word))
        for k in range(images_per_class):
            number = len(plan)
            plan.append(
                CacheImage(f"sd_{class_index + 1:03d}_{k + 1:04d}", class_index + 1, word, prompt, seed + number)
            )
    return plan


def region_keys(features: torch.Tensor, labels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(1 + n, E) features of an image and its (H, W) label map -> (2, E) float32 [foreground key, background key]:
    the mean patch token under each region at the token grid (nearest resizing); NaN where a region is empty."""
    small = F.interpolate(torch.as_tensor(labels)[None, None].float(), size=grid, mode="nearest")[0, 0].flatten()
    patches = features[1:].float()
    keys = np.full((2, patches.shape[1]), np.nan, dtype=np.float32)
    for row, region in enumerate((small > 0, small == 0)):
        if region.any():
            keys[row] = patches[region.to(patches.device)].mean(0).cpu().numpy()
    return keys


@dataclass
class KeyValueCache:
    """keys (Nk, E) float32, values (Nk, 1 + C) one-hot float32, class_ids (Nk,) with 0 the background."""

    keys: np.ndarray
    values: np.ndarray
    class_ids: np.ndarray


def cluster_keys(
    region_features: np.ndarray,
    class_ids: Sequence[int],
    num_classes: int,
    *,
    clusters: int,
    background_clusters: int,
    random_state: int,
    n_init: int,
    key: str,
) -> KeyValueCache:
    """(N, 2, E) per-image [foreground, background] keys and each image's class -> the clustered cache. `key` names
    the params entry in the error raised when a class has fewer images with a region than it asks keys of."""
    from sklearn.cluster import KMeans

    class_ids = np.asarray(class_ids)
    groups = [(0, region_features[:, 1], background_clusters, "background_clusters")]
    groups += [(c, region_features[class_ids == c, 0], clusters, "clusters") for c in range(1, num_classes + 1)]
    keys, owners = [], []
    for class_id, points, k, setting in groups:
        points = points[~np.isnan(points).any(axis=1)]
        if len(np.unique(points, axis=0)) < k:
            what = "background" if class_id == 0 else f"class {class_id}"
            raise ArtifactError(
                f"{key}.{setting}: {k} keys asked for the {what}, but only {len(points)} images gave it a region "
                "(draw more images per class, or ask fewer keys)"
            )
        model = KMeans(n_clusters=k, random_state=random_state, n_init=n_init).fit(points.astype(np.float64))
        keys.append(model.cluster_centers_.astype(np.float32))
        owners += [class_id] * k
    owners = np.asarray(owners, dtype=np.int16)
    values = np.eye(num_classes + 1, dtype=np.float32)[owners]
    return KeyValueCache(np.concatenate(keys), values, owners)


def write_keys(path: Path, cache: KeyValueCache, provenance: dict[str, Any]) -> None:
    import pyarrow as pa

    from wsss_core.store.table import write_table

    width, classes = cache.keys.shape[1], cache.values.shape[1]
    table = pa.table(
        {
            "class_id": pa.array(cache.class_ids, pa.int16()),
            "key": pa.FixedSizeListArray.from_arrays(pa.array(cache.keys.ravel(), pa.float32()), width),
            "value": pa.FixedSizeListArray.from_arrays(pa.array(cache.values.ravel(), pa.float32()), classes),
        }
    )
    write_table(path, table, provenance)


def read_cache(directory: str | Path, *, embed_dim: int, class_names: Sequence[str]) -> tuple[KeyValueCache, dict]:
    """The keys and values of an sd_cache artifact and its provenance, checked against the CLIP's embedding width and
    the dataset's class names (background first)."""
    from wsss_core.store.table import read_table

    path = Path(directory) / KEYS_TABLE
    if not path.is_file():
        raise ArtifactError(f"{path}: no SD key-value cache (an sd_cache run writes it)")
    table, provenance = read_table(path)
    try:
        keys = np.asarray(table["key"].combine_chunks().flatten(), dtype=np.float32).reshape(table.num_rows, -1)
        values = np.asarray(table["value"].combine_chunks().flatten(), dtype=np.float32).reshape(table.num_rows, -1)
        class_ids = np.asarray(table["class_id"], dtype=np.int16)
    except KeyError as error:
        raise ArtifactError(f"{path}: not a key-value cache table (no column {error})") from None
    recorded = provenance.get("details", {}).get("class_names")
    if recorded is not None and list(recorded) != list(class_names):
        raise ArtifactError(
            f"{path}: the cache was drawn for the classes {recorded}, the dataset has {list(class_names)}"
        )
    if keys.shape[1] != embed_dim:
        raise ArtifactError(
            f"{path}: keys have {keys.shape[1]} dims, this CLIP's features have {embed_dim} (another CLIP made them?)"
        )
    if values.shape[1] != len(class_names):
        raise ArtifactError(
            f"{path}: values have {values.shape[1]} columns, the dataset has {len(class_names)} classes"
        )
    return KeyValueCache(keys, values, class_ids), provenance
