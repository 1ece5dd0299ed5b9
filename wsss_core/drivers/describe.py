"""The describe stage (ExCEL's attribute bank): descriptions of every foreground class from the run's source, CLIP text
embeddings of the prefixed descriptions, KMeans into `clusters` attributes, written as one sealed directory:

  artifacts/descriptions_<run>/
    descriptions.parquet  class_index, class_name, position, sentence, text, cluster (one row per description)
    bank.zarr/            attr_features (D, B) and attr_flag (C, B), float32; class names in its attributes
    provenance.json       the run's params, the source (raw answers of an LLM), the CLIP checkpoint, the seal

The same inputs give the same bytes: answers are cached (sources.py), KMeans is seeded, nothing time- or
host-dependent is written. The run log (logs/describe_<run>.json) gets the request counts and times instead.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np

# The key is looked up by this name in the environment; a value that cannot be a variable's name is probably the key
# itself pasted into params, which would then be written into provenance: refused without showing it.
_ENV_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def check_run(run: dict[str, Any], key: str, num_classes: int) -> None:
    """Cross-key checks the schema cannot express, reported with the key's name, before any request is sent."""
    from wsss_core.params import ParamsError

    sentences = num_classes * run["n"]
    if run["clusters"] > sentences:
        raise ParamsError(
            f"{key}.clusters: {run['clusters']} attributes, but {num_classes} classes x n={run['n']} give only "
            f"{sentences} descriptions to cluster"
        )
    if run["source"] != "openai":
        return
    chat = run["openai"]
    if chat["model"] is None:
        raise ParamsError(f"{key}.openai.model: must name the model (source openai)")
    if "{class_name}" not in chat["prompt_template"]:
        raise ParamsError(f"{key}.openai.prompt_template: has no {{class_name}} placeholder")
    name = chat["api_key_env"]
    if name is not None and (not name or name[0].isdigit() or not set(name) <= _ENV_NAME_CHARS):
        raise ParamsError(
            f"{key}.openai.api_key_env: must be the NAME of an environment variable (letters, digits, _), not the key "
            "itself (value not shown)"
        )


def describe_classes(
    name: str, index_path: Path, out: Path, params: dict[str, Any], cache_dir: Path | None = None
) -> dict[str, Any]:
    """The describe stage of run `describe.runs.<name>`: write `out` and return figures for the run log."""
    from wsss_core.data.index import read_index
    from wsss_core.describe.bank import (
        BANK_DIR,
        AttributeBank,
        check_clusters,
        cluster_bank,
        compose_texts,
        descriptions_table,
        encode_texts,
        write_bank,
    )
    from wsss_core.describe.sources import CACHE_DIR, run_descriptions
    from wsss_core.models.loading import clip_from_params
    from wsss_core.provenance import dumps, make_provenance
    from wsss_core.store.scratch import artifact_lock_file, hold_lock, release_lock
    from wsss_core.store.seal import sealed_directory
    from wsss_core.store.table import write_table

    key = f"describe.runs.{name}"
    run, clip_params = params["describe"]["runs"][name], params["models"]["clip"]
    class_names = read_index(index_path).class_names[1:]  # the foreground classes, in label order
    check_run(run, key, len(class_names))

    lock = artifact_lock_file(out)
    hold_lock(lock, str(out))
    try:
        start = time.perf_counter()
        descriptions = run_descriptions(run, class_names, CACHE_DIR if cache_dir is None else cache_dir)
        described = time.perf_counter() - start

        texts = [text for c in class_names for text in compose_texts(c, descriptions.sentences[c], run["prefix"])]
        sentence_class = np.repeat(np.arange(len(class_names)), run["n"])
        clip = clip_from_params(clip_params, params["describe"]["device"])
        embeddings = encode_texts(clip, texts)
        check_clusters(run["clusters"], embeddings, f"{key}.clusters")
        features, flags, clusters = cluster_bank(
            embeddings, sentence_class, len(class_names), run["clusters"], run["random_state"], run["n_init"]
        )

        upstream = {"index": index_path}
        if run["source"] == "file":
            upstream["descriptions"] = Path(run["reads"])
        provenance = make_provenance(
            f"describe_{name}",
            {key: run, "models.clip": clip_params},
            upstream=upstream,
            checkpoints={"clip": clip.provenance},
            libraries=("open_clip_torch", "scikit-learn"),
            details={
                **_source_details(run, descriptions.record),
                "class_names": list(class_names),
                "descriptions": len(texts),
                "embedding_dim": int(features.shape[0]),
                "attributes": int(features.shape[1]),
                "classes_with_identical_flags": _identical_rows(flags, class_names),
            },
        )
        table = descriptions_table(class_names, descriptions.sentences, texts, clusters)
        with sealed_directory(out) as building:
            write_table(building / "descriptions.parquet", table, provenance)
            write_bank(building / BANK_DIR, AttributeBank(features, flags, tuple(class_names)))
            (building / "provenance.json").write_text(dumps(provenance))
    finally:
        release_lock(lock)
    seconds = descriptions.stats.get("request_seconds", [])
    return {
        "source": run["source"],
        "classes": len(class_names),
        "requests": descriptions.stats.get("requests", 0),
        "cached": descriptions.stats.get("cached", 0),
        "describe_seconds": round(described, 3),
        "seconds_per_request": round(sum(seconds) / len(seconds), 3) if seconds else None,
    }


def _source_details(run: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """What provenance keeps about the source: the LLM's identity and raw answers (never a key), or the file."""
    if run["source"] == "file":
        return {"source": "file"}  # the file itself is an upstream: path and sha256
    chat = run["openai"]
    return {
        "source": "openai",
        "base_url": chat["base_url"],
        "model": chat["model"],
        "prompt_template_sha256": hashlib.sha256(chat["prompt_template"].encode()).hexdigest(),
        "responses": record["responses"],
    }


def _identical_rows(flags: np.ndarray, class_names: tuple[str, ...]) -> list[list[str]]:
    """Groups of classes whose descriptions fell into exactly the same clusters: the bank cannot tell them apart
    (the reference prints them as confused); worth a look, not an error."""
    groups: dict[bytes, list[str]] = {}
    for row, name in zip(flags, class_names, strict=True):
        groups.setdefault(row.tobytes(), []).append(name)
    return [names for names in groups.values() if len(names) > 1]
