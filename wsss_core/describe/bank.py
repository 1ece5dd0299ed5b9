"""The attribute bank of ExCEL's text semantic enrichment: every class description, prefixed with
"a clean origami {class}. " and encoded by CLIP's text encoder, then clustered with KMeans into B attributes.

  attr_features (D, B)  the cluster centres, one column per attribute (the reference stores centres transposed)
  attr_flag     (C, B)  1 where some description of class c fell into cluster b

A CAM method enriches class c's text embedding t_c with softmax(t_c . A) A^T over these columns; the flags say which
attributes came from which class. The reference clusters with scikit-learn 1.0.2, whose KMeans default was
n_init=10 (now "auto", i.e. 1), with random_state 0; both are params here (`n_init`, `random_state`).

On disk (`write_bank`, read back by `load_attribute_bank`): a zarr v3 group `bank.zarr` holding the two float32
arrays in one zstd chunk each, and the foreground class names (rows of attr_flag) in its attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from wsss_core.describe import DescriptionError

BANK_DIR = "bank.zarr"
FEATURES, FLAGS = "attr_features", "attr_flag"


class AttributeBank(NamedTuple):
    """attr_features (D, B) float32, attr_flag (C, B) float32, and the C foreground class names of attr_flag's rows."""

    attr_features: np.ndarray
    attr_flag: np.ndarray
    class_names: tuple[str, ...]


def compose_texts(class_name: str, sentences: Sequence[str], prefix: str) -> list[str]:
    """The texts encoded for one class: the prefix (its `{class_name}` filled) before each stripped sentence, lower
    case, as the reference builds them (CLIP's tokenizer lower-cases anyway; the stored text is what it saw).

    A sentence that already starts with the prefix (the reference's published descriptions do) keeps its own.
    """
    head = prefix.replace("{class_name}", class_name)
    texts = []
    for sentence in sentences:
        text = sentence.strip()
        carried = head.strip() and text.lower().startswith(head.strip().lower())
        texts.append((text if carried else head + text).lower())
    return texts


def encode_texts(clip, texts: Sequence[str]) -> np.ndarray:
    """L2-normalised CLIP text embeddings (P, D), float32."""
    from wsss_core.models.clip_text import encode_text

    embeddings = encode_text(clip, list(texts)).cpu().numpy().astype(np.float32)
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


def check_clusters(clusters: int, embeddings: np.ndarray, where: str) -> None:
    """KMeans needs at least B distinct points: with fewer, some clusters would be empty or repeat a centre."""
    sentences = embeddings.shape[0]
    if clusters > sentences:
        raise DescriptionError(f"{where}: {clusters} clusters, but only {sentences} descriptions to cluster")
    distinct = np.unique(embeddings, axis=0).shape[0]
    if clusters > distinct:
        raise DescriptionError(
            f"{where}: {clusters} clusters, but the {sentences} descriptions give only {distinct} distinct embeddings "
            "(repeated sentences?)"
        )


def cluster_bank(
    embeddings: np.ndarray,
    sentence_class: np.ndarray,
    num_classes: int,
    clusters: int,
    random_state: int = 0,
    n_init: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """KMeans over all descriptions: (attr_features (D, B), attr_flag (C, B), cluster of each description (P,)).

    `sentence_class` holds each description's row of attr_flag (0..C-1).
    """
    from sklearn.cluster import KMeans

    kmeans = KMeans(n_clusters=clusters, random_state=random_state, n_init=n_init).fit(embeddings)
    labels = kmeans.labels_.astype(np.int64)
    flags = np.zeros((num_classes, clusters), dtype=np.float32)
    flags[sentence_class, labels] = 1.0
    features = np.ascontiguousarray(kmeans.cluster_centers_.T, dtype=np.float32)
    return features, flags, labels


def write_bank(path: str | Path, bank: AttributeBank) -> None:
    """The zarr group: both arrays whole in one chunk (a few hundred KiB), zstd, class names in the attributes."""
    import zarr
    from zarr.codecs import ZstdCodec

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs.update({"class_names": list(bank.class_names)})  # the rows of attr_flag
    for name, array in ((FEATURES, bank.attr_features), (FLAGS, bank.attr_flag)):
        stored = group.create_array(
            name, shape=array.shape, chunks=array.shape, dtype="float32", compressors=ZstdCodec(level=3)
        )
        stored[...] = array


def load_attribute_bank(path: str | Path) -> AttributeBank:
    """The bank of a describe artifact: `path` is `artifacts/descriptions_<run>` or its `bank.zarr`."""
    import zarr

    from wsss_core.store.table import ArtifactError

    path = Path(path)
    group_path = path / BANK_DIR if (path / BANK_DIR).is_dir() else path
    if not (group_path / "zarr.json").is_file():
        raise ArtifactError(f"{path}: no attribute bank ({BANK_DIR} not found; has its describe stage run?)")
    group = zarr.open_group(str(group_path), mode="r", zarr_format=3)
    try:
        features = np.asarray(group[FEATURES][...], dtype=np.float32)
        flags = np.asarray(group[FLAGS][...], dtype=np.float32)
        class_names = tuple(group.attrs["class_names"])
    except KeyError as error:
        raise ArtifactError(f"{group_path}: not an attribute bank (lacks {error})") from None
    if features.ndim != 2 or flags.ndim != 2 or features.shape[1] != flags.shape[1] or len(class_names) != len(flags):
        raise ArtifactError(
            f"{group_path}: inconsistent bank: {FEATURES} {features.shape}, {FLAGS} {flags.shape}, "
            f"{len(class_names)} class names"
        )
    return AttributeBank(features, flags, class_names)


def descriptions_table(
    class_names: Sequence[str], sentences: dict[str, list[str]], texts: Sequence[str], clusters: np.ndarray
):
    """One row per description, in class then list order: class_index (the dataset's class id, 1..C; attr_flag row
    class_index - 1), class_name, position (0-based in the class's list), sentence (as the source gave it), text (what
    was encoded), cluster (its column of the bank)."""
    import pyarrow as pa

    rows = [
        (index, name, position, sentence)
        for index, name in enumerate(class_names, start=1)
        for position, sentence in enumerate(sentences[name])
    ]
    if len(rows) != len(texts) or len(rows) != len(clusters):
        raise ValueError(f"{len(rows)} descriptions, {len(texts)} texts, {len(clusters)} cluster labels")
    schema = pa.schema(
        [
            pa.field("class_index", pa.int32(), nullable=False),
            pa.field("class_name", pa.string(), nullable=False),
            pa.field("position", pa.int32(), nullable=False),
            pa.field("sentence", pa.string(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("cluster", pa.int32(), nullable=False),
        ]
    )
    columns = list(zip(*rows, strict=True))
    return pa.Table.from_arrays(
        [
            pa.array(columns[0], pa.int32()),
            pa.array(columns[1], pa.string()),
            pa.array(columns[2], pa.int32()),
            pa.array(columns[3], pa.string()),
            pa.array(list(texts), pa.string()),
            pa.array(np.asarray(clusters, dtype=np.int32)),
        ],
        schema=schema,
    )
