"""Class-agnostic masks: SAM's automatic masks (or a classical stand-in) stored once and shared, for SAMS seeding.

from wsss_core.masks.records import MaskSet, read_image_masks
masks = read_image_masks("artifacts/sam_masks/train", "2007_000032")   # an ImageMasks of the kept masks
for image_id, masks in MaskSet("artifacts/sam_masks/train"): ...         # the whole split, part by part

Modules: records (parquet schema, ImageMasks, readers), rle (run-length forms), sam_generator (SAM + FMA changes),
felzenszwalb (a generator without weights), occupation (the quasi-superpixel filter), writer (resumable, sharded
artifact writing), generate (the stage), overlay (pictures).

Every mask carries a level: the index of SAM's multimask output that produced it (0 subpart, 1 part, 2 whole), or
the scale of the over-segmentation that produced it. `kept` marks the quasi-superpixels of FMA-WSSS: the masks that
survive the whole > part > subpart occupation filter.
"""

from __future__ import annotations

LEVEL_NAMES = ("subpart", "part", "whole")
