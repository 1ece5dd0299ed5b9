"""Dataset loaders (VOC, COCO, folder, synthetic), the registry, validation and the index table."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from wsss_core.data import (
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    DATASETS,
    SYNTHETIC_CLASSES,
    VOC_CLASSES,
    Dataset,
    DatasetError,
    Sample,
    build_dataset,
    dataset_from_index,
    generate_synthetic,
    index_table,
    load_coco,
    load_folder,
    load_synthetic,
    load_voc,
    read_image,
    read_mask,
    validate_dataset,
)
from wsss_core.data.base import mask_labels, read_split_list
from wsss_core.data.coco import category_ids_to_classes
from wsss_core.data.index import read_index
from wsss_core.data.voc import voc_palette
from wsss_core.hashing import sha256_file
from wsss_core.provenance import make_provenance
from wsss_core.store.table import write_table

HEIGHT, WIDTH = 48, 64


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A small generated dataset in VOC layout; tests that modify files work on a copy (the `syn` fixture)."""
    root = tmp_path_factory.mktemp("pristine") / "syn"
    return generate_synthetic(root, n_train=6, n_val=3, image_size=(HEIGHT, WIDTH), seed=1)


@pytest.fixture
def syn(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "syn"))


def write_jpg(path: Path, value: int = 90, size: tuple[int, int] = (HEIGHT, WIDTH)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(path, format="JPEG", quality=95)


def write_png(path: Path, values: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8))
    if palette:
        image.putpalette(voc_palette())
    image.save(path, format="PNG")


def xml_with_objects(*names: str, part: str | None = None) -> str:
    objects = "".join(
        f"<object><name>{name}</name>{f'<part><name>{part}</name></part>' if part else ''}</object>" for name in names
    )
    return f"<annotation><filename>x.jpg</filename>{objects}</annotation>"


# ---------------------------------------------------------------- readers and small helpers


def test_voc_palette_matches_the_bit_spreading_rule():
    palette = voc_palette()
    assert len(palette) == 768
    colours = {index: tuple(palette[3 * index : 3 * index + 3]) for index in (0, 1, 2, 3, 5, 8, 15, 255)}
    assert colours == {
        0: (0, 0, 0),
        1: (128, 0, 0),
        2: (0, 128, 0),
        3: (128, 128, 0),
        5: (128, 0, 128),
        8: (64, 0, 0),
        15: (192, 128, 128),
        255: (224, 224, 192),
    }


def test_read_mask_returns_palette_indices_not_colours(tmp_path):
    values = np.array([[0, 1, 2], [15, 255, 1]])
    write_png(tmp_path / "p.png", values, palette=True)
    write_png(tmp_path / "l.png", values)
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), values)
    np.testing.assert_array_equal(read_mask(tmp_path / "l.png"), values)
    Image.fromarray(np.zeros((2, 3, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DatasetError, match=r"rgb\.png.*mode RGB"):
        read_mask(tmp_path / "rgb.png")


def test_read_image_gives_rgb_uint8_even_for_greyscale(tmp_path):
    Image.fromarray(np.array([[10, 20, 30]], dtype=np.uint8)).save(tmp_path / "grey.png")
    image = read_image(tmp_path / "grey.png")
    assert image.shape == (1, 3, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[0, :, 0], [10, 20, 30])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    with pytest.raises(DatasetError, match="missing.jpg.*does not exist"):
        read_image(tmp_path / "missing.jpg")


def test_mask_labels_lists_present_foreground_classes_and_rejects_out_of_range():
    mask = np.array([[0, 3, 3], [255, 1, 0]], dtype=np.uint8)
    assert mask_labels(mask, num_classes=4, path="m.png") == (1, 3)
    with pytest.raises(DatasetError, match=r"m\.png.*\[4\]"):
        mask_labels(mask + (mask == 3), num_classes=4, path="m.png")


def test_read_split_list_takes_the_first_token_as_id(tmp_path):
    path = tmp_path / "list.txt"
    deeplab_line = "/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000039.png"
    path.write_text(f"2007_000032\n\n{deeplab_line}\nCOCO_x_9 45 49\n")
    assert read_split_list(path) == ["2007_000032", "2007_000039", "COCO_x_9"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match=r"empty\.txt.*empty"):
        read_split_list(tmp_path / "empty.txt")


# ---------------------------------------------------------------- VOC and synthetic loaders


def test_voc_labels_from_masks_and_from_xml(pristine):
    for source in ("gt_masks", "xml"):
        ds = load_voc(pristine, "train", label_source=source, class_names=SYNTHETIC_CLASSES)
        assert (ds.name, ds.split, ds.label_source, len(ds), ds.num_classes) == ("voc", "train", source, 6, 7)
        assert ds[0].image_path == pristine / "JPEGImages" / "syn_000001.jpg"
        assert ds[0].mask_path == pristine / "SegmentationClass" / "syn_000001.png"
        for sample in ds:
            values = set(np.unique(np.array(Image.open(sample.mask_path))).tolist()) - {0, 255}
            assert sample.labels == tuple(sorted(values))


def test_load_synthetic_reads_class_names_from_the_dataset(pristine):
    ds = load_synthetic(pristine, "val")
    assert ds.name == "synthetic" and ds.class_names == SYNTHETIC_CLASSES
    assert [sample.image_id for sample in ds] == ["syn_000007", "syn_000008", "syn_000009"]
    validate_dataset(ds)


def test_voc_accepts_the_vocdevkit_folder(pristine, tmp_path):
    shutil.copytree(pristine, tmp_path / "VOCdevkit" / "VOC2012")
    ds = load_voc(tmp_path / "VOCdevkit", "train", class_names=SYNTHETIC_CLASSES)
    assert ds.root == tmp_path / "VOCdevkit" / "VOC2012"
    assert ds.samples == load_voc(tmp_path / "VOCdevkit" / "VOC2012", "train", class_names=SYNTHETIC_CLASSES).samples
    with pytest.raises(DatasetError, match="not a VOC folder"):
        load_voc(tmp_path, "train")


def test_voc_prefers_segmentation_class_aug(syn):
    # Aug masks that say "class 1 everywhere" differ from the official ones, so the labels show which were read.
    for path in (syn / "SegmentationClass").iterdir():
        write_png(syn / "SegmentationClassAug" / path.name, np.ones((HEIGHT, WIDTH)))
    ds = load_voc(syn, "train", class_names=SYNTHETIC_CLASSES)
    assert ds[0].mask_path == syn / "SegmentationClassAug" / "syn_000001.png"
    assert {sample.labels for sample in ds} == {(1,)}
    official = load_voc(syn, "train", mask_dir="SegmentationClass", class_names=SYNTHETIC_CLASSES)
    assert official[0].mask_path == syn / "SegmentationClass" / "syn_000001.png"
    assert {sample.labels for sample in official} != {(1,)}
    with pytest.raises(DatasetError, match="NoSuchMasks"):
        load_voc(syn, "train", mask_dir="NoSuchMasks", class_names=SYNTHETIC_CLASSES)


def test_voc_finds_train_aug_under_segmentation_aug(syn):
    (syn / "ImageSets" / "SegmentationAug").mkdir()
    (syn / "ImageSets" / "Segmentation" / "train_aug.txt").rename(syn / "ImageSets/SegmentationAug/train_aug.txt")
    ds = load_voc(syn, "train_aug", class_names=SYNTHETIC_CLASSES)
    assert len(ds) == 6
    with pytest.raises(DatasetError, match=r"Segmentation/nosplit\.txt.*SegmentationAug/nosplit\.txt"):
        load_voc(syn, "nosplit", class_names=SYNTHETIC_CLASSES)


def test_voc_test_split_without_masks(syn):
    for number, names in ((1, ("disc", "star")), (2, ("ring",))):
        shutil.copy(syn / "JPEGImages" / "syn_000001.jpg", syn / "JPEGImages" / f"tst_{number}.jpg")
        (syn / "Annotations" / f"tst_{number}.xml").write_text(xml_with_objects(*names))
    (syn / "ImageSets" / "Segmentation" / "test.txt").write_text("tst_1\ntst_2\n")
    plain = load_voc(syn, "test", class_names=SYNTHETIC_CLASSES)
    assert plain.label_source == "none"
    assert [(s.mask_path, s.labels) for s in plain] == [(None, ()), (None, ())]
    from_xml = load_voc(syn, "test", label_source="xml", class_names=SYNTHETIC_CLASSES)
    assert from_xml.label_source == "xml"
    assert [(s.mask_path, s.labels) for s in from_xml] == [(None, (1, 4)), (None, (5,))]
    validate_dataset(from_xml)


def test_voc_split_with_some_masks_missing_names_the_missing_mask(syn):
    (syn / "SegmentationClass" / "syn_000003.png").unlink()
    with pytest.raises(DatasetError, match=r"syn_000003\.png.*does not exist"):
        load_voc(syn, "train", class_names=SYNTHETIC_CLASSES)


def test_voc_xml_ignores_part_names_and_rejects_unknown_object_names(syn):
    (syn / "Annotations" / "syn_000001.xml").write_text(xml_with_objects("disc", part="head"))
    assert load_voc(syn, "train", label_source="xml", class_names=SYNTHETIC_CLASSES)[0].labels == (1,)
    (syn / "Annotations" / "syn_000002.xml").write_text(xml_with_objects("square", "hexagon"))
    with pytest.raises(DatasetError, match=r"syn_000002\.xml.*'hexagon'"):
        load_voc(syn, "train", label_source="xml", class_names=SYNTHETIC_CLASSES)
    with pytest.raises(DatasetError, match="label_source"):
        load_voc(syn, "train", label_source="captions")


def test_voc_class_constants():
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background"
    assert (VOC_CLASSES[1], VOC_CLASSES[15], VOC_CLASSES[20]) == ("aeroplane", "person", "tvmonitor")


# ---------------------------------------------------------------- COCO


def test_coco_category_ids_and_names():
    assert len(COCO_CATEGORY_IDS) == 80 and len(COCO_CLASSES) == 81
    assert list(COCO_CATEGORY_IDS) == sorted(set(COCO_CATEGORY_IDS))
    assert set(range(1, 91)) - set(COCO_CATEGORY_IDS) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    # Category 44 is the 40th id (43 ids below it, minus the 4 gaps 12, 26, 29, 30); 90 is the last.
    assert (COCO_CLASSES[1], COCO_CLASSES[40], COCO_CLASSES[80]) == ("person", "bottle", "toothbrush")


def test_category_ids_map_to_class_indices():
    raw = np.array([[0, 1, 44], [90, 255, 13]], dtype=np.uint8)
    # 13 (stop sign) follows the gap at 12, so it is class 12.
    np.testing.assert_array_equal(category_ids_to_classes(raw), [[0, 1, 40], [80, 255, 12]])
    with pytest.raises(DatasetError, match=r"x\.png.*\[12, 91\]"):
        category_ids_to_classes(np.array([[12, 91]], dtype=np.uint8), "x.png")


def make_coco(root: Path, mask_values: dict[str, int], image_dir: str, mask_dir: str, number_only: bool = False):
    """A tiny COCO-layout folder: one single-object mask per image, with the given pixel value."""
    lines = []
    for image_id, value in mask_values.items():
        write_jpg(root / image_dir / f"{image_id}.jpg")
        mask = np.zeros((HEIGHT, WIDTH))
        mask[10:20, 10:30] = value
        mask[10, 10:30] = 255
        mask_name = image_id.rsplit("_", 1)[-1] if number_only else image_id
        write_png(root / mask_dir / f"{mask_name}.png", mask)
        lines.append(f"{image_id} 0 7\n")  # CLIP-ES lists append class indices; the loader must ignore them
    return "".join(lines)


def test_coco_raw_category_ids_map_to_classes(tmp_path):
    ids = {"COCO_train2014_000000000001": 1, "COCO_train2014_000000000002": 44, "COCO_train2014_000000000003": 90}
    (tmp_path / "train.txt").write_text(make_coco(tmp_path, ids, "JPEGImages/train2014", "SegmentationClass/train2014"))
    ds = load_coco(tmp_path, "train", mask_values="category_id")
    assert (ds.name, ds.label_source, ds.num_classes) == ("coco", "gt_masks", 81)
    assert [sample.labels for sample in ds] == [(1,), (40,), (80,)]
    assert ds[1].image_path == tmp_path / "JPEGImages/train2014/COCO_train2014_000000000002.jpg"
    with pytest.raises(DatasetError, match=r"000000000003\.png.*\[90\]"):
        load_coco(tmp_path, "train")  # as class indices, 90 is out of range


def test_coco_weclip_layout_with_class_index_masks(tmp_path):
    ids = {"COCO_val2014_000000000042": 40, "COCO_val2014_000000000073": 80}
    (tmp_path / "val.txt").write_text(make_coco(tmp_path, ids, "JPEGImages/val", "SegmentationClass/val", True))
    ds = load_coco(tmp_path, "val")
    assert [sample.labels for sample in ds] == [(40,), (80,)]
    assert ds[0].mask_path == tmp_path / "SegmentationClass/val/000000000042.png"
    validate_dataset(ds)


def test_coco_clip_es_layout_with_flat_masks_and_external_split_file(tmp_path):
    ids = {"COCO_train2014_000000000005": 3}
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "mine.txt").write_text(make_coco(tmp_path / "COCO2014", ids, "JPEGImages/train2014", "SegmentationClass"))
    ds = load_coco(tmp_path / "COCO2014", "train", split_file=lists / "mine.txt")
    assert ds[0].mask_path == tmp_path / "COCO2014/SegmentationClass/COCO_train2014_000000000005.png"
    assert ds[0].labels == (3,)
    with pytest.raises(DatasetError, match=r"train\.txt"):
        load_coco(tmp_path / "COCO2014", "train")
    with pytest.raises(DatasetError, match="mask_values"):
        load_coco(tmp_path / "COCO2014", "train", mask_values="rgb", split_file=lists / "mine.txt")


# ---------------------------------------------------------------- user folder


@pytest.fixture
def user_folder(tmp_path) -> Path:
    root = tmp_path / "mine"
    write_jpg(root / "images" / "a.jpg")
    write_jpg(root / "images" / "c.jpeg")
    Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)).save(root / "images" / "b.png")
    (root / "images" / "notes.txt").write_text("not an image")
    (root / "classes.txt").write_text("cat\ndog\n\nbird\n")
    (root / "labels.csv").write_text("image_id,labels,split\na,dog; cat,train\nb,,train\nc,bird,val\n")
    write_png(root / "masks" / "a.png", np.ones((HEIGHT, WIDTH)))
    return root


def test_folder_reads_csv_labels_masks_and_split_column(user_folder):
    ds = load_folder(user_folder)
    assert (ds.name, ds.split, ds.label_source) == ("folder", "all", "csv")
    assert ds.class_names == ("background", "cat", "dog", "bird")
    assert [(s.image_id, s.image_path.name, s.labels) for s in ds] == [
        ("a", "a.jpg", (1, 2)),
        ("b", "b.png", ()),
        ("c", "c.jpeg", (3,)),
    ]
    assert [s.mask_path for s in ds] == [user_folder / "masks" / "a.png", None, None]
    assert [s.image_id for s in load_folder(user_folder, "val")] == ["c"]
    assert [s.image_id for s in build_dataset("folder", user_folder, "train")] == ["a", "b"]
    with pytest.raises(DatasetError, match=r"labels\.csv.*no rows for split 'test'"):
        load_folder(user_folder, "test")
    validate_dataset(ds)


def test_folder_unknown_class_name_names_the_csv_line(user_folder):
    (user_folder / "labels.csv").write_text("image_id,labels\na,cat\nb,cat;zebra\n")
    with pytest.raises(DatasetError, match=r"labels\.csv:3: unknown class name 'zebra'"):
        load_folder(user_folder)


@pytest.mark.parametrize(
    ("csv_text", "classes", "message"),
    [
        ("id,labels\na,cat\n", "cat\n", r"labels\.csv:1: header"),
        ("image_id,labels\na,cat\nz,cat\n", "cat\n", r"labels\.csv:3: no image for 'z'"),
        ("image_id,labels\na,cat,extra\n", "cat\n", r"labels\.csv:2: expected 2 fields"),
        ("image_id,labels\na,cat\n", "background\ncat\n", r"classes\.txt.*implicit"),
        ("image_id,labels\na,cat\n", "cat\ncat\n", r"classes\.txt.*more than once"),
    ],
)
def test_folder_errors_name_the_file(user_folder, csv_text, classes, message):
    (user_folder / "labels.csv").write_text(csv_text)
    (user_folder / "classes.txt").write_text(classes)
    with pytest.raises(DatasetError, match=message):
        load_folder(user_folder)


def test_folder_split_without_split_column(user_folder):
    (user_folder / "labels.csv").write_text("image_id,labels\na,cat\n")
    with pytest.raises(DatasetError, match=r"labels\.csv.*no split column"):
        load_folder(user_folder, "train")


# ---------------------------------------------------------------- registry


@pytest.fixture
def every_kind(pristine, user_folder, tmp_path) -> dict[str, tuple[Path, str, dict]]:
    coco = tmp_path / "coco"
    split_list = make_coco(coco, {"COCO_val2014_000000000001": 5}, "images/val2014", "SegmentationClass")
    (coco / "val.txt").write_text(split_list)
    return {
        "voc": (pristine, "val", {"class_names": SYNTHETIC_CLASSES}),
        "coco": (coco, "val", {}),
        "folder": (user_folder, "all", {}),
        "synthetic": (pristine, "train", {"label_source": "xml"}),
    }


@pytest.mark.parametrize("kind", sorted(DATASETS))
def test_every_registered_loader_builds_a_valid_dataset(kind, every_kind):
    root, split, options = every_kind[kind]
    ds = build_dataset(kind, root, split, **options)
    assert ds.name == kind and ds.split == split and len(ds) > 0
    assert all(sample.labels for sample in ds if sample.mask_path is not None)
    validate_dataset(ds)


def test_build_dataset_rejects_unknown_kinds_and_options(pristine):
    with pytest.raises(DatasetError, match="'cityscapes'.*voc, coco, folder, synthetic"):
        build_dataset("cityscapes", pristine, "train")
    with pytest.raises(DatasetError, match="colour_jitter"):
        build_dataset("synthetic", pristine, "train", colour_jitter=True)


# ---------------------------------------------------------------- validation


def test_validate_accepts_a_good_dataset(syn):
    validate_dataset(load_synthetic(syn, "train"))


def test_validate_missing_image(syn):
    ds = load_synthetic(syn, "train")
    (syn / "JPEGImages" / "syn_000004.jpg").unlink()
    with pytest.raises(DatasetError, match=r"syn_000004\.jpg: image file does not exist"):
        validate_dataset(ds)


def test_validate_corrupt_image(syn):
    ds = load_synthetic(syn, "train")
    (syn / "JPEGImages" / "syn_000002.jpg").write_bytes(b"\x00garbage, not a JPEG" * 10)
    with pytest.raises(DatasetError, match=r"syn_000002\.jpg: cannot read image"):
        validate_dataset(ds)


def test_validate_truncated_image(syn):
    ds = load_synthetic(syn, "train")
    path = syn / "JPEGImages" / "syn_000005.jpg"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DatasetError, match=r"syn_000005\.jpg"):
        validate_dataset(ds)


def test_validate_mask_value_out_of_range(syn):
    ds = load_synthetic(syn, "train", label_source="xml")
    mask = read_mask(syn / "SegmentationClass" / "syn_000003.png")
    mask[0, 0] = 50  # 6 foreground classes: 50 is neither a class nor 255
    write_png(syn / "SegmentationClass" / "syn_000003.png", mask, palette=True)
    with pytest.raises(DatasetError, match=r"syn_000003\.png: mask values \[50\]"):
        validate_dataset(ds)


def test_validate_mask_size_mismatch(syn):
    ds = load_synthetic(syn, "train")
    write_png(syn / "SegmentationClass" / "syn_000006.png", np.zeros((WIDTH, HEIGHT)), palette=True)
    with pytest.raises(DatasetError, match=rf"syn_000006\.png: mask is {WIDTH}x{HEIGHT} .* is {HEIGHT}x{WIDTH}"):
        validate_dataset(ds)


def test_validate_empty_split(syn):
    (syn / "ImageSets" / "Segmentation" / "val.txt").write_text("")
    with pytest.raises(DatasetError, match=r"val\.txt: split list is empty"):
        load_synthetic(syn, "val")
    empty = Dataset("synthetic", syn, "val", SYNTHETIC_CLASSES, (), "gt_masks")
    with pytest.raises(DatasetError, match="split 'val'.*empty"):
        validate_dataset(empty)


def test_validate_duplicate_image_id(syn):
    (syn / "ImageSets" / "Segmentation" / "val.txt").write_text("syn_000007\nsyn_000008\nsyn_000007\n")
    with pytest.raises(DatasetError, match=r"image id 'syn_000007' twice \(positions 0 and 2\)"):
        validate_dataset(load_synthetic(syn, "val"))


def test_validate_image_level_label_out_of_range(pristine):
    sample = Sample("syn_000001", pristine / "JPEGImages/syn_000001.jpg", None, (2, 7))
    ds = Dataset("synthetic", pristine, "train", SYNTHETIC_CLASSES, (sample,), "xml")
    with pytest.raises(DatasetError, match=r"syn_000001\.jpg: image-level labels \[7\]"):
        validate_dataset(ds)


# ---------------------------------------------------------------- index table


def test_index_round_trip_and_content(pristine):
    ds = load_synthetic(pristine, "train")
    table = index_table(ds)
    assert table.schema.field("labels").type == pa.list_(pa.int16())
    assert table.schema.field("height").type == pa.int32() and table.schema.field("width").type == pa.int32()
    assert table.column("image_id").to_pylist() == [f"syn_00000{i}" for i in range(1, 7)]
    assert table.column("image_path").to_pylist()[0] == "JPEGImages/syn_000001.jpg"
    assert table.column("mask_path").to_pylist()[0] == "SegmentationClass/syn_000001.png"
    assert set(table.column("height").to_pylist()) == {HEIGHT} and set(table.column("width").to_pylist()) == {WIDTH}
    assert table.column("image_sha256").to_pylist() == [sha256_file(s.image_path) for s in ds]
    assert table.column("mask_sha256").to_pylist() == [sha256_file(s.mask_path) for s in ds]
    rebuilt = dataset_from_index(table, ds.root, ds.name, ds.split, ds.class_names, ds.label_source)
    assert rebuilt == ds


def test_index_of_a_split_without_masks_has_nulls(syn):
    (syn / "ImageSets" / "Segmentation" / "test.txt").write_text("tst_1\n")
    write_jpg(syn / "JPEGImages" / "tst_1.jpg", size=(20, 30))
    ds = load_synthetic(syn, "test")
    table = index_table(ds)
    assert table.column("mask_path").to_pylist() == [None] and table.column("mask_sha256").to_pylist() == [None]
    assert (table.column("height")[0].as_py(), table.column("width")[0].as_py()) == (20, 30)
    assert dataset_from_index(table, syn, "synthetic", "test", SYNTHETIC_CLASSES, "none") == ds


def test_index_parquet_bytes_are_reproducible_and_host_independent(pristine, tmp_path):
    ds = load_synthetic(pristine, "val")
    pq.write_table(index_table(ds), tmp_path / "first.parquet")
    pq.write_table(index_table(ds), tmp_path / "second.parquet")
    assert (tmp_path / "first.parquet").read_bytes() == (tmp_path / "second.parquet").read_bytes()
    metadata = b"".join(key + value for key, value in (index_table(ds).schema.metadata or {}).items())
    assert str(pristine).encode() not in metadata


def test_index_errors(pristine, tmp_path):
    outside = Sample("far", tmp_path / "far.jpg", None, ())
    write_jpg(tmp_path / "far.jpg")
    with pytest.raises(DatasetError, match=r"far\.jpg: not inside the dataset root"):
        index_table(Dataset("folder", pristine, "all", ("background", "x"), (outside,), "csv"))
    table = index_table(load_synthetic(pristine, "val")).drop_columns(["labels"])
    with pytest.raises(DatasetError, match="labels"):
        dataset_from_index(table, pristine, "synthetic", "val", SYNTHETIC_CLASSES, "gt_masks")


def test_read_index_rebuilds_the_dataset_from_a_prepare_stage_file(pristine, tmp_path):
    ds = load_synthetic(pristine, "val", label_source="xml")
    details = {"kind": ds.name, "root": str(ds.root), "split": "val", "class_names": list(ds.class_names)}
    write_table(tmp_path / "val.parquet", index_table(ds), make_provenance("prepare", {}, details=details))
    with pytest.raises(DatasetError, match=r"val\.parquet.*\['label_source'\]"):
        read_index(tmp_path / "val.parquet")
    details["label_source"] = ds.label_source
    write_table(tmp_path / "val.parquet", index_table(ds), make_provenance("prepare", {}, details=details))
    assert read_index(tmp_path / "val.parquet") == ds
