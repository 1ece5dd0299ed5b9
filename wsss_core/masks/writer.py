"""Builds one split of the mask artifact image by image: resumable after a kill, in any order of images.

Work happens in `.wsss_scratch/<artifact>-<split>-<key>/`, the key a hash of everything that decides the content
(the images and their hashes, the provenance with its params and checkpoint, the part size):
  images/<index>.arrow   the records of one finished image (Arrow IPC, lossless)
  parts/part-NNNNN.parquet  a finished part; its images' .arrow files are then deleted
A rerun after a kill skips finished images. `commit_into` assembles the split once every part is there. Part files
are written whole from the same records whichever worker computed them (see wsss_core/engine), so the result is
byte-identical to one uninterrupted run.
"""

from __future__ import annotations

import math
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wsss_core.masks.records import IMAGES_FILE, IMAGES_SCHEMA, MASK_SCHEMA, PROVENANCE_FILE, part_file
from wsss_core.provenance import canonical, dumps
from wsss_core.store.atomic import atomic_file
from wsss_core.store.scratch import DEFAULT_SCRATCH, resume_key
from wsss_core.store.seal import seal_directory
from wsss_core.store.table import ArtifactError, write_table

MAX_PARTS = 128
MIN_PART_IMAGES = 8


def default_part_images(n_images: int) -> int:
    """Images per part: at most MAX_PARTS files per split, but not parts of a handful of images."""
    return max(MIN_PART_IMAGES, math.ceil(n_images / MAX_PARTS))


class MaskWriter:
    """Collects the mask records of one split and assembles the split directory.

    Arguments:
      name: the split directory's name inside the artifact (the dataset split), e.g. "train".
      image_ids, image_sha256, sizes: the images in dataset order, their content hashes and (height, width).
      provenance: the record written to provenance.json and into every parquet file.
      part_images: images per part file (default: `default_part_images`).
      scratch_root: where unfinished work lives between runs.
      artifact: the artifact's name, used in the scratch directory's name.
    """

    def __init__(
        self,
        name: str,
        *,
        image_ids: list[str],
        image_sha256: list[str],
        sizes: np.ndarray,
        provenance: dict[str, Any],
        part_images: int | None = None,
        scratch_root: str | Path = DEFAULT_SCRATCH,
        artifact: str = "sam_masks",
    ) -> None:
        if len(set(image_ids)) != len(image_ids):
            raise ValueError(f"{name}: duplicate image ids")
        if not image_ids:
            raise ValueError(f"{name}: no images")
        self.name = name
        self.image_ids = list(image_ids)
        self.image_sha256 = list(image_sha256)
        self.sizes = np.asarray(sizes, dtype=np.int32).reshape(len(self.image_ids), 2)
        self.provenance = canonical(provenance)
        self.part_images = part_images or default_part_images(len(self.image_ids))
        layout = {
            "images": [self.image_ids, self.image_sha256, self.sizes.tolist()],
            "provenance": self.provenance,
            "part_images": self.part_images,
            "schema": MASK_SCHEMA.to_string(),
        }
        self.work = Path(scratch_root) / f"{artifact}-{name}-{resume_key(layout)}"
        (self.work / "images").mkdir(parents=True, exist_ok=True)
        (self.work / "parts").mkdir(exist_ok=True)
        # Finished single images, from one directory listing (a stat per image per write is too many for COCO).
        self._finished = {int(f.stem) for f in (self.work / "images").glob("*.arrow")}

    @property
    def n_parts(self) -> int:
        return math.ceil(len(self.image_ids) / self.part_images)

    def part_of(self, index: int) -> int:
        return index // self.part_images

    def _part_range(self, part: int) -> range:
        start = part * self.part_images
        return range(start, min(start + self.part_images, len(self.image_ids)))

    def _part_path(self, part: int) -> Path:
        return self.work / "parts" / part_file(part)

    def _image_path(self, index: int) -> Path:
        return self.work / "images" / f"{index}.arrow"

    def pending(self) -> list[int]:
        """Images still to compute."""
        return [
            index
            for part in range(self.n_parts)
            if not self._part_path(part).exists()
            for index in self._part_range(part)
            if index not in self._finished
        ]

    def missing_parts(self) -> list[int]:
        return [part for part in range(self.n_parts) if not self._part_path(part).exists()]

    def write(self, index: int, table: pa.Table) -> None:
        """Keep image `index`'s records; once its part is complete, write the part file."""
        image_id = self.image_ids[index]
        if not table.schema.equals(MASK_SCHEMA):
            raise ValueError(f"{self.name}: records of {image_id!r} do not follow MASK_SCHEMA:\n{table.schema}")
        if table.num_rows and set(table.column("image_id").unique().to_pylist()) != {image_id}:
            raise ValueError(f"{self.name}: records passed for image {image_id!r} name other images")
        with atomic_file(self._image_path(index)) as handle, pa.ipc.new_file(handle, MASK_SCHEMA) as ipc:
            ipc.write_table(table)
        self._finished.add(index)
        part = self.part_of(index)
        if all(i in self._finished for i in self._part_range(part)):
            self._assemble(part)

    def _assemble(self, part: int) -> None:
        tables = []
        for index in self._part_range(part):
            with pa.memory_map(str(self._image_path(index))) as source:
                tables.append(pa.ipc.open_file(source).read_all())
        write_table(self._part_path(part), pa.concat_tables(tables).combine_chunks(), self.provenance)
        for index in self._part_range(part):
            self._image_path(index).unlink()
            self._finished.discard(index)

    def commit_into(self, target: str | Path) -> Path:
        """Write the finished split directory `target` (which must not exist), sealed (see `store/seal.py`); the scratch
        stays until cleanup()."""
        missing = self.missing_parts()
        if missing:
            first = self.image_ids[self._part_range(missing[0]).start]
            raise ArtifactError(
                f"masks of split {self.name!r}: {len(missing)} of {self.n_parts} parts unfinished (first: part "
                f"{missing[0]}, image {first!r})"
            )
        target = Path(target)
        target.mkdir(parents=True)
        rows = {"part": [], "n_masks": [], "n_kept": []}
        for part in range(self.n_parts):
            source = self._part_path(part)
            try:  # a hard link costs nothing; the scratch copy goes only once the artifact is in place
                os.link(source, target / part_file(part))
            except OSError:
                shutil.copyfile(source, target / part_file(part))
            table = pq.read_table(source, columns=["image_id", "kept"])
            ids = table.column("image_id").to_pylist()
            kept = table.column("kept").to_pylist()
            n_masks, n_kept = Counter(ids), Counter(i for i, k in zip(ids, kept, strict=True) if k)
            for index in self._part_range(part):
                rows["part"].append(part)
                rows["n_masks"].append(n_masks[self.image_ids[index]])
                rows["n_kept"].append(n_kept[self.image_ids[index]])
        images = pa.Table.from_pydict(
            {
                "image_id": self.image_ids,
                "image_sha256": self.image_sha256,
                "height": self.sizes[:, 0].tolist(),
                "width": self.sizes[:, 1].tolist(),
                **rows,
            },
            schema=IMAGES_SCHEMA,
        )
        write_table(target / IMAGES_FILE, images, self.provenance)
        (target / PROVENANCE_FILE).write_text(dumps(self.provenance))
        seal_directory(target)
        return target

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
