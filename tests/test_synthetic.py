"""The synthetic dataset generator: determinism, consistent labels, coverage, and a non-trivial task."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image

from wsss_core.data import SYNTHETIC_CLASSES, DatasetError, generate_synthetic, load_synthetic, read_image, read_mask
from wsss_core.data.synthetic import _outline

IMAGE_SIZE = (64, 80)  # not square, so a height/width mix-up shows


@pytest.fixture(scope="module")
def forty(tmp_path_factory) -> Path:
    """A 40-image set: 30 train + 10 val."""
    return generate_synthetic(tmp_path_factory.mktemp("syn") / "forty", n_train=30, n_val=10, image_size=IMAGE_SIZE)


def _xml_classes(path: Path) -> list[int]:
    """Class indices of the objects of an annotation file, parsed here independently of the loaders."""
    names = [obj.findtext("name") for obj in ElementTree.parse(path).getroot().findall("object")]
    return [SYNTHETIC_CLASSES.index(name) for name in names]


def _all_files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_same_arguments_give_identical_files_and_another_seed_does_not(tmp_path):
    first = _all_files(generate_synthetic(tmp_path / "a", n_train=5, n_val=2, image_size=IMAGE_SIZE, seed=3))
    second = _all_files(generate_synthetic(tmp_path / "b", n_train=5, n_val=2, image_size=IMAGE_SIZE, seed=3))
    other = _all_files(generate_synthetic(tmp_path / "c", n_train=5, n_val=2, image_size=IMAGE_SIZE, seed=4))
    assert len(first) == 7 * 3 + 3 + 2  # jpg + png + xml per image, three split lists, classes.txt, the marker
    assert first == second
    assert first["JPEGImages/syn_000001.jpg"] != other["JPEGImages/syn_000001.jpg"]
    assert first["SegmentationClass/syn_000001.png"] != other["SegmentationClass/syn_000001.png"]


def test_layout_ids_splits_and_class_list(forty):
    lists = forty / "ImageSets" / "Segmentation"
    train = (lists / "train.txt").read_text().split()
    val = (lists / "val.txt").read_text().split()
    assert train == [f"syn_{number:06d}" for number in range(1, 31)]
    assert val == [f"syn_{number:06d}" for number in range(31, 41)]
    assert (lists / "train_aug.txt").read_text() == (lists / "train.txt").read_text()
    assert (forty / "classes.txt").read_text().splitlines() == list(SYNTHETIC_CLASSES[1:])
    assert len(SYNTHETIC_CLASSES) - 1 >= 5 and SYNTHETIC_CLASSES[0] == "background"
    with Image.open(forty / "JPEGImages" / "syn_000001.jpg") as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (80, 64))
    with Image.open(forty / "SegmentationClass" / "syn_000001.png") as mask:
        assert (mask.mode, mask.size) == ("P", (80, 64))
        palette = mask.getpalette()
        assert palette[3:6] == [128, 0, 0] and palette[255 * 3 : 256 * 3] == [224, 224, 192]


def test_masks_hold_exactly_the_classes_of_the_xml(forty):
    for image_id in (forty / "ImageSets/Segmentation/train.txt").read_text().split():
        mask = read_mask(forty / "SegmentationClass" / f"{image_id}.png")
        in_mask = set(np.unique(mask).tolist()) - {0, 255}
        assert in_mask == set(_xml_classes(forty / "Annotations" / f"{image_id}.xml")), image_id


def test_labels_from_masks_equal_labels_from_xml(forty):
    from_masks = load_synthetic(forty, "train")
    from_xml = load_synthetic(forty, "train", label_source="xml")
    assert (from_masks.label_source, from_xml.label_source) == ("gt_masks", "xml")
    assert [s.labels for s in from_masks] == [s.labels for s in from_xml]
    assert all(sample.labels for sample in from_masks)


def test_every_class_appears_in_forty_images(forty):
    seen = {label for split in ("train", "val") for sample in load_synthetic(forty, split) for label in sample.labels}
    assert seen == set(range(1, len(SYNTHETIC_CLASSES)))


def test_object_count_stays_in_range(tmp_path):
    root = generate_synthetic(tmp_path / "two", n_train=6, n_val=1, image_size=IMAGE_SIZE, min_objects=2, max_objects=2)
    counts = [len(_xml_classes(path)) for path in sorted((root / "Annotations").glob("*.xml"))]
    assert counts == [2] * 7


def test_outline_marks_both_sides_of_every_object_edge():
    owner = np.full((4, 5), -1)
    owner[1:3, 1:3] = 0  # a 2x2 object
    owner[1, 3] = 1  # a second object touching it on the right
    expected = np.array(
        [
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [1, 1, 1, 1, 0],
            [0, 1, 1, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(_outline(owner), expected)


def test_ignore_band_separates_every_two_different_labels(forty):
    for image_id in ("syn_000001", "syn_000002", "syn_000003", "syn_000004"):
        mask = read_mask(forty / "SegmentationClass" / f"{image_id}.png")
        assert 0 < (mask == 255).mean() < 0.2
        # Like VOC's outline band: background never touches an object, nor one object another, without 255 between.
        for first, second in ((mask[1:, :], mask[:-1, :]), (mask[:, 1:], mask[:, :-1])):
            touching = (first != second) & (first != 255) & (second != 255)
            assert not touching.any(), image_id


def test_backgrounds_are_textured_and_grey_level_does_not_separate_objects(forty):
    background_std, grey_bg, grey_fg = [], [], []
    for sample in load_synthetic(forty, "train"):
        grey = read_image(sample.image_path).astype(np.float64).mean(axis=-1)
        mask = read_mask(sample.mask_path)
        background_std.append(grey[mask == 0].std())
        grey_bg.append(grey[mask == 0])
        grey_fg.append(grey[(mask > 0) & (mask < 255)])
    assert min(background_std) > 5 and np.mean(background_std) > 12
    # Best single grey threshold (either direction) over all pixels, against always guessing "background".
    values = np.concatenate(grey_bg + grey_fg)
    is_fg = np.concatenate([np.zeros(sum(map(len, grey_bg))), np.ones(sum(map(len, grey_fg)))])[np.argsort(values)]
    fg_at_or_below = np.cumsum(is_fg)
    count = np.arange(1, len(values) + 1)
    accuracy = ((count - fg_at_or_below) + (is_fg.sum() - fg_at_or_below)) / len(values)
    best = np.maximum(accuracy, 1 - accuracy).max()
    always_background = 1 - is_fg.mean()
    assert best - always_background < 0.1


def test_regenerating_replaces_a_previous_generation_but_not_a_foreign_folder(tmp_path):
    root = generate_synthetic(tmp_path / "syn", n_train=4, n_val=2, image_size=IMAGE_SIZE)
    generate_synthetic(root, n_train=2, n_val=1, image_size=IMAGE_SIZE)
    assert sorted(path.name for path in (root / "JPEGImages").iterdir()) == [f"syn_00000{i}.jpg" for i in (1, 2, 3)]
    assert not (tmp_path / ".syn.partial").exists()
    (root / "notes.txt").write_text("keep me")  # a generated folder somebody added to
    with pytest.raises(DatasetError, match="notes.txt"):
        generate_synthetic(root, n_train=1, n_val=1, image_size=IMAGE_SIZE)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="mine: exists and was not created by the demo generator"):
        generate_synthetic(foreign, n_train=1, n_val=1, image_size=IMAGE_SIZE)
    assert (foreign / "notes.txt").read_text() == (root / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("leftover", ["root", "partial"])
def test_an_unmarked_folder_with_a_dataset_layout_is_never_replaced(tmp_path, leftover):
    # A VOC tree has exactly the generator's subfolder names: only the marker tells the generator's folders apart.
    target = tmp_path / ("VOC2012" if leftover == "root" else ".VOC2012.partial")
    for folder in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets"):
        (target / folder).mkdir(parents=True)
    (target / "JPEGImages" / "2007_000027.jpg").write_bytes(b"user image")
    with pytest.raises(DatasetError, match=f"{target.name}.*not created by the demo generator"):
        generate_synthetic(tmp_path / "VOC2012", n_train=1, n_val=1, image_size=IMAGE_SIZE)
    assert (target / "JPEGImages" / "2007_000027.jpg").read_bytes() == b"user image"
    assert sorted(path.name for path in tmp_path.iterdir()) == [target.name]


def test_an_interrupted_generation_is_cleaned_up(tmp_path):
    (tmp_path / ".syn.partial").mkdir()  # killed right after creating its scratch, before marking it
    generate_synthetic(tmp_path / "syn", n_train=1, n_val=1, image_size=IMAGE_SIZE)
    partial = tmp_path / ".syn.partial"
    partial.mkdir()
    (partial / ".wsss_generated").write_text("")
    (partial / "JPEGImages").mkdir()  # killed half-way through writing images
    generate_synthetic(tmp_path / "syn", n_train=1, n_val=1, image_size=IMAGE_SIZE)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["syn"]


@pytest.mark.parametrize(
    "arguments",
    [{"n_train": 0}, {"image_size": (16, 64)}, {"min_objects": 3, "max_objects": 2}, {"min_objects": 0}],
)
def test_bad_arguments_raise(tmp_path, arguments):
    with pytest.raises(DatasetError):
        generate_synthetic(tmp_path / "bad", **{"n_train": 2, "n_val": 1, "image_size": IMAGE_SIZE, **arguments})
    assert not (tmp_path / "bad").exists()
