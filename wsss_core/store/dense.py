"""Dense per-image maps (label maps, CAMs, score maps) as one sharded zarr v3 group.

Layout of `NAME.zarr/`:
  zarr.json   group attributes {"wsss": {kind, image_ids, class_names, provenance, extra}}
  maps/       (N, [C,] Hmax, Wmax) array, zero-padded; one image per chunk, `shard_images` images per shard file
  sizes/      (N, 2) int32, the (height, width) of each image's map
  classes/    (N, C) int16, class id of each channel, -1 for padding (only for per-class maps such as CAMs)

Images of different sizes share one array by padding; zstd makes the padding almost free. Sharding keeps an
artifact of 10,582 images to about a hundred files, which is what DVC hashes and pushes.

Writing is resumable and atomic: the group is built in a scratch directory keyed by a hash of everything that
determines its content (layout, provenance and the code, see `store/scratch.py`). Each finished image is kept there
as its own file until its shard is complete; the shard is then written whole, in one piece, and leaves a marker. A
rerun after a kill skips finished images and shards, so an image is never computed twice, and produces the same
bytes as an uninterrupted one; images may arrive in any order (an engine's workers finish them out of order), and
only a complete group is moved into place. A kill at any
point of the commit leaves a state the next run restarts from; a second process writing the same artifact is
refused while the first runs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsss_core.provenance import canonical
from wsss_core.store.atomic import atomic_file, replace_directory
from wsss_core.store.scratch import DEFAULT_SCRATCH, artifact_lock_file, hold_lock, release_lock, resume_key
from wsss_core.store.seal import seal_directory
from wsss_core.store.table import ArtifactError

MAX_SHARD_FILES = 128


def default_shard_images(n_images: int) -> int:
    return max(1, math.ceil(n_images / MAX_SHARD_FILES))


class DenseMapWriter:
    """Collects per-image maps and writes them shard by shard.

    Arguments:
      path: the final artifact directory (conventionally `*.zarr`).
      kind: what the maps are ("labels", "cams", "scores", ...); readers check it.
      image_ids: the images, in dataset order.
      sizes: (N, 2) height and width of each image's map.
      dtype: numpy dtype of the maps (uint8 labels, float16 CAMs, ...).
      channels: None for one map per image, else the maximum number of channels per image.
      class_names: the dataset's class names (index 0 background).
      image_sha256: the sha256 of each image the maps were computed from (from the dataset index); readers check
        them against the index they pair the maps with, so maps of an older version of the data are refused.
      provenance: the record from `make_provenance`.
      extra: further JSON attributes (e.g. the resolution a CAM is stored at).
      scratch_root: where unfinished artifacts live between runs.
      shard_images: images per shard file (default: at most MAX_SHARD_FILES shards).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        kind: str,
        image_ids: Sequence[str],
        sizes: np.ndarray,
        dtype: str | np.dtype,
        channels: int | None = None,
        class_names: Sequence[str] = (),
        image_sha256: Sequence[str] | None = None,
        provenance: dict[str, Any],
        extra: dict[str, Any] | None = None,
        scratch_root: str | Path = DEFAULT_SCRATCH,
        shard_images: int | None = None,
        compression_level: int = 3,
    ) -> None:
        self.path = Path(path)
        self.image_ids = list(image_ids)
        self.sizes = np.asarray(sizes, dtype=np.int32).reshape(len(self.image_ids), 2)
        if len(set(self.image_ids)) != len(self.image_ids):
            raise ValueError(f"{self.path}: duplicate image ids")
        if len(self.image_ids) == 0:
            raise ValueError(f"{self.path}: no images to write")
        if image_sha256 is not None and len(image_sha256) != len(self.image_ids):
            raise ValueError(f"{self.path}: {len(image_sha256)} image hashes for {len(self.image_ids)} images")
        self.dtype = np.dtype(dtype)
        self.channels = channels
        self.shard_images = shard_images or default_shard_images(len(self.image_ids))
        self.attributes = canonical(
            {
                "kind": kind,
                "image_ids": self.image_ids,
                "image_sha256": None if image_sha256 is None else list(image_sha256),
                "class_names": list(class_names),
                "provenance": provenance,
                "extra": extra or {},
            }
        )
        layout = {
            "attributes": self.attributes,
            "sizes": self.sizes.tolist(),
            "dtype": self.dtype.str,
            "channels": channels,
            "shard_images": self.shard_images,
            "compression_level": compression_level,
        }
        self.work = Path(scratch_root) / f"{self.path.name}-{resume_key(layout)}"
        self.group_path = self.work / self.path.name
        self.done_dir = self.work / "done"
        self._locks = [artifact_lock_file(self.path, scratch_root), self.work.with_name(self.work.name + ".lock")]
        for lock in self._locks:
            hold_lock(lock, f"{self.path} (scratch {self.work})")
        self.images_dir = self.work / "images"
        shutil.rmtree(self._retired, ignore_errors=True)  # a scratch a killed commit was removing
        if not (self.done_dir.is_dir() and (self.group_path / "zarr.json").is_file()):
            self._create(compression_level)  # fresh, or killed while creating, or killed after its group moved out
        self._group = _open_group(self.group_path, mode="r+")
        # Finished images of unfinished shards, from one directory listing (not a stat per image).
        self._finished = {int(f.stem) for f in self.images_dir.glob("*.npz")}

    @property
    def _retired(self) -> Path:
        return self.work.with_name(self.work.name + ".retired")

    @property
    def n_shards(self) -> int:
        return math.ceil(len(self.image_ids) / self.shard_images)

    def _shard_range(self, shard: int) -> range:
        start = shard * self.shard_images
        return range(start, min(start + self.shard_images, len(self.image_ids)))

    def _shard_done(self, shard: int) -> bool:
        return (self.done_dir / str(shard)).exists()

    def pending(self) -> list[int]:
        """Indices of the images still to compute (all of them on a fresh run)."""
        return [
            i
            for s in range(self.n_shards)
            if not self._shard_done(s)
            for i in self._shard_range(s)
            if i not in self._finished
        ]

    def _image_file(self, index: int) -> Path:
        return self.images_dir / f"{index}.npz"

    def _create(self, compression_level: int) -> None:
        import zarr
        from zarr.codecs import ZstdCodec

        if self.work.exists():  # a creation that was killed half-way: start over
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        group = zarr.open_group(str(self.group_path), mode="w", zarr_format=3)
        group.attrs["wsss"] = self.attributes
        n = len(self.image_ids)
        height, width = (int(v) for v in self.sizes.max(axis=0))
        plane = (height, width) if self.channels is None else (self.channels, height, width)
        group.create_array(
            "maps",
            shape=(n, *plane),
            chunks=(1, *plane),
            shards=(self.shard_images, *plane),
            dtype=self.dtype,
            compressors=ZstdCodec(level=compression_level),
            fill_value=0,
        )
        sizes = group.create_array("sizes", shape=(n, 2), chunks=(n, 2), dtype="int32", fill_value=0)
        sizes[:] = self.sizes
        if self.channels is not None:
            group.create_array(
                "classes",
                shape=(n, self.channels),
                chunks=(self.shard_images, self.channels),
                dtype="int16",
                fill_value=-1,
            )
        self.done_dir.mkdir()
        self.images_dir.mkdir()

    def write(self, index: int, data: np.ndarray, classes: Sequence[int] | None = None) -> None:
        """Add image `index`'s map; a shard is flushed to disk as soon as all its images are in."""
        data = np.asarray(data)
        height, width = (int(v) for v in self.sizes[index])
        expected = (height, width) if self.channels is None else (len(classes or ()), height, width)
        if data.shape != expected:
            raise ValueError(
                f"{self.path}: map of image {self.image_ids[index]!r} has shape {data.shape}, expected {expected}"
            )
        if self.channels is not None and len(classes) > self.channels:
            raise ValueError(f"{self.path}: {len(classes)} channels for {self.image_ids[index]!r}, max {self.channels}")
        class_array = np.asarray(classes if classes is not None else (), dtype=np.int16)
        with atomic_file(self._image_file(index)) as handle:
            np.savez(handle, data=data.astype(self.dtype, copy=False), classes=class_array)
        self._finished.add(index)
        shard = index // self.shard_images
        if all(i in self._finished for i in self._shard_range(shard)):
            self._flush(shard)

    def _flush(self, shard: int) -> None:
        rows = self._shard_range(shard)
        maps = self._group["maps"]
        block = np.zeros((len(rows), *maps.shape[1:]), dtype=self.dtype)
        class_block = np.full((len(rows), self.channels or 0), -1, dtype=np.int16)
        for row, index in enumerate(rows):
            with np.load(self._image_file(index)) as saved:
                data, classes = saved["data"], saved["classes"]
            if self.channels is None:
                block[row, : data.shape[0], : data.shape[1]] = data
            else:
                block[row, : data.shape[0], : data.shape[1], : data.shape[2]] = data
                class_block[row, : len(classes)] = classes
        maps[rows.start : rows.stop] = block
        if self.channels is not None:
            self._group["classes"][rows.start : rows.stop] = class_block
        (self.done_dir / str(shard)).touch()
        for index in rows:  # only once the marker is down: a kill in between leaves both, which is consistent
            self._image_file(index).unlink()
            self._finished.discard(index)

    def commit(self) -> Path:
        """Move the finished group into place and drop the scratch directory.

        Each step leaves a state a rerun recovers from: the group moves whole (see `replace_directory`), then the
        scratch is renamed to `.retired` in one step before it is deleted, so its shard markers never outlive it.
        """
        missing = [s for s in range(self.n_shards) if not self._shard_done(s)]
        if missing:
            first = self.image_ids[self._shard_range(missing[0]).start]
            raise RuntimeError(f"{self.path}: {len(missing)} shards unfinished (first image {first!r})")
        seal_directory(self.group_path)  # its own content hash, which `wsss audit` checks
        replace_directory(self.group_path, self.path)
        os.replace(self.work, self._retired)
        shutil.rmtree(self._retired)
        for lock in self._locks:
            release_lock(lock)
        return self.path


def _open_group(path: Path, mode: str):
    import zarr

    return zarr.open_group(str(path), mode=mode, zarr_format=3)


def read_dense_attributes(path: str | Path) -> dict[str, Any]:
    """The group's `wsss` attributes straight from zarr.json (no zarr import; used by audit)."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        raise ArtifactError(f"{path}: not a dense-map artifact (no zarr.json)")
    try:
        return json.loads(meta.read_text())["attributes"]["wsss"]
    except (json.JSONDecodeError, KeyError) as error:
        raise ArtifactError(f"{meta}: no wsss attributes ({error})") from error


class DenseMaps:
    """Read access to a dense-map artifact.

    `maps[i]` returns image i's map cropped to its size (and to its own channels); iteration reads one shard at a
    time, which is much faster than random access.
    """

    def __init__(self, path: str | Path, kind: str | None = None) -> None:
        self.path = Path(path)
        attributes = read_dense_attributes(self.path)
        if kind is not None and attributes["kind"] != kind:
            raise ArtifactError(f"{self.path}: holds {attributes['kind']!r} maps, expected {kind!r}")
        self.kind: str = attributes["kind"]
        self.image_ids: list[str] = attributes["image_ids"]
        self.image_sha256: list[str] | None = attributes.get("image_sha256")
        self.class_names: list[str] = attributes["class_names"]
        self.provenance: dict[str, Any] = attributes["provenance"]
        self.extra: dict[str, Any] = attributes["extra"]
        self._group = _open_group(self.path, mode="r")
        self._maps = self._group["maps"]
        self.sizes = np.asarray(self._group["sizes"][:])
        self._classes = np.asarray(self._group["classes"][:]) if "classes" in self._group else None
        self._position = {image_id: i for i, image_id in enumerate(self.image_ids)}
        self.shard_images = self._maps.shards[0] if self._maps.shards else 1

    def __len__(self) -> int:
        return len(self.image_ids)

    def check_images(self, index_path: str | Path) -> None:
        """Refuse maps that were not computed from the images `index_path` lists now (by image id and sha256).

        Regenerated or replaced data keeps its image ids; only the hashes tell that the maps belong to old images.
        """
        from wsss_core.data.index import read_index_hashes

        if self.image_sha256 is None:
            raise ArtifactError(f"{self.path}: records no image hashes (written by an older version); rerun its stage")
        current = read_index_hashes(index_path)
        for image_id, recorded in zip(self.image_ids, self.image_sha256, strict=True):
            if image_id not in current:
                raise ArtifactError(f"{self.path}: image {image_id!r} is not in the index {index_path}")
            if current[image_id] != recorded:
                raise ArtifactError(
                    f"{self.path}: computed from another version of image {image_id!r} than {index_path} lists "
                    f"(sha256 {recorded[:12]} then, {current[image_id][:12]} now); rerun the stage that wrote it"
                )

    def index_of(self, image_id: str) -> int:
        try:
            return self._position[image_id]
        except KeyError:
            raise ArtifactError(f"{self.path}: no map for image {image_id!r}") from None

    def classes(self, index: int) -> np.ndarray:
        """Class ids of image `index`'s channels (empty for single-channel maps)."""
        if self._classes is None:
            return np.zeros(0, dtype=np.int16)
        row = self._classes[index]
        return row[row >= 0]

    def _crop(self, index: int, padded: np.ndarray) -> np.ndarray:
        height, width = (int(v) for v in self.sizes[index])
        if self._classes is None:
            return padded[:height, :width]
        return padded[: len(self.classes(index)), :height, :width]

    def __getitem__(self, index: int) -> np.ndarray:
        return self._crop(index, np.asarray(self._maps[index]))

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for start in range(0, len(self), self.shard_images):
            block = np.asarray(self._maps[start : start + self.shard_images])
            for offset, padded in enumerate(block):
                yield self.image_ids[start + offset], self._crop(start + offset, padded)
