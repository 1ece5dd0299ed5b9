"""SAMS seed variants: a CAM artifact + the sam_masks artifact -> a seed artifact (seeds.sams.variants.<name>).

The masks may have been computed elsewhere and imported; before using them the stage checks, image by image, that
they were computed for this dataset: every image of the CAMs must be in the masks with the same content hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsss_core.progress import progress
from wsss_core.provenance import make_provenance
from wsss_core.store.table import ArtifactError


def open_masks_for(index_path: Path, masks_root: Path):
    """The mask split of `masks_root` matching the dataset index, checked against its image ids and hashes."""
    from wsss_core.masks.records import IMAGES_FILE, MaskSet, read_index_hashes

    columns, provenance = read_index_hashes(index_path)
    split = provenance.get("details", {}).get("split")
    split_dir = masks_root / split if split else masks_root
    if not (split_dir / IMAGES_FILE).is_file():
        present = (
            sorted(p.name for p in masks_root.iterdir() if (p / IMAGES_FILE).is_file()) if masks_root.is_dir() else []
        )
        raise ArtifactError(
            f"{split_dir}: no masks for split {split!r} (has sam_masks run, or been imported?); "
            f"{masks_root} holds: {', '.join(present) or 'nothing'}"
        )
    masks = MaskSet(split_dir)
    masks.check_images(columns["image_id"], columns["image_sha256"], index_path)
    return masks


def make_sams_seeds(cams_path: Path, masks_root: Path, out_path: Path, name: str, settings: dict[str, Any]) -> Path:
    """Seeds of every image of `cams_path` by the SAMS rule with `settings` (a seeds.sams.variants.<name> section)."""
    from wsss_core.cam.resize import upsample_cams
    from wsss_core.drivers.seeds import open_cams_with_index, seed_writer
    from wsss_core.seeding.sams import sams_labels

    cams, index_path, dataset, size_of = open_cams_with_index(cams_path)
    masks = open_masks_for(index_path, masks_root)
    provenance = make_provenance(
        "seeds",
        {f"seeds.sams.variants.{name}": settings},
        upstream={"cams": cams_path, "index": index_path, "masks": masks.path},
        details={"variant": name, "split": dataset.split, "method": "sams"},
    )
    writer = seed_writer(out_path, cams, size_of, provenance)
    pending = set(writer.pending())
    for index, (image_id, maps) in enumerate(progress(cams, f"seeds {name} (SAMS)", total=len(cams))):
        if index not in pending:
            continue
        full = upsample_cams(maps, size_of[image_id])
        labels = sams_labels(full, cams.classes(index).tolist(), masks.read(image_id), settings["alpha"])
        writer.write(index, labels)
    return writer.commit()
