"""A user's own images, labelled by a CSV file.

root/
    images/{image_id}.jpg | .jpeg | .png
    classes.txt        one foreground class name per line (background is the implicit class 0)
    labels.csv         header "image_id,labels" or "image_id,labels,split"; labels are class names
                       separated by ";" (may be empty)
    masks/{image_id}.png   optional class-index ground truth, for evaluation
"""

from __future__ import annotations

import csv
from pathlib import Path

from wsss_core.data.base import IMAGE_SUFFIXES, Dataset, DatasetError, Sample, read_class_names

CSV_HEADERS = (["image_id", "labels"], ["image_id", "labels", "split"])


def _image_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: image folder does not exist")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in files:
            raise DatasetError(f"{path}: image id '{path.stem}' is also used by {files[path.stem]}")
        files[path.stem] = path
    return files


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, fields) of every non-blank row."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = [field.strip() for field in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader if any(field.strip() for field in row)]
    except FileNotFoundError:
        raise DatasetError(f"{path}: label file does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"{path}: cannot read label file ({error})") from error
    if header not in CSV_HEADERS:
        raise DatasetError(f"{path}:1: header must be 'image_id,labels' or 'image_id,labels,split', got {header}")
    return header, rows


def load_folder(root: str | Path, split: str = "all") -> Dataset:
    """Load a user's image folder (layout in the module docstring); labels come from labels.csv.

    Arguments:
      root: the folder holding images/, classes.txt and labels.csv.
      split: "all" takes every row of labels.csv; any other value takes the rows whose split column equals it.
    """
    root = Path(root).expanduser()
    class_names = read_class_names(root / "classes.txt")
    class_index = {name: index for index, name in enumerate(class_names) if index > 0}
    images = _image_files(root / "images")
    csv_path = root / "labels.csv"
    header, rows = _csv_rows(csv_path)
    if split != "all" and "split" not in header:
        raise DatasetError(f"{csv_path}: split '{split}' requested but the file has no split column")

    samples = []
    for line, fields in rows:
        if len(fields) != len(header):
            raise DatasetError(f"{csv_path}:{line}: expected {len(header)} fields ({','.join(header)}), got {fields}")
        row = dict(zip(header, (field.strip() for field in fields), strict=True))
        if split != "all" and row["split"] != split:
            continue
        image_id = row["image_id"]
        if image_id not in images:
            raise DatasetError(
                f"{csv_path}:{line}: no image for '{image_id}' in {root / 'images'} (.jpg, .jpeg or .png)"
            )
        labels = []
        for name in (name.strip() for name in row["labels"].split(";")):
            if not name:
                continue
            if name not in class_index:
                known = ", ".join(class_names[1:])
                raise DatasetError(f"{csv_path}:{line}: unknown class name '{name}'; classes.txt lists: {known}")
            labels.append(class_index[name])
        mask_path = root / "masks" / f"{image_id}.png"
        samples.append(Sample(image_id, images[image_id], mask_path if mask_path.is_file() else None, tuple(labels)))
    if not samples:
        raise DatasetError(f"{csv_path}: no rows for split '{split}'")
    return Dataset("folder", root, split, class_names, tuple(samples), "csv")
