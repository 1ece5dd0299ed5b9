"""Where the n descriptions of each class come from: `file`, a YAML or JSON file the user wrote, or `openai`, one
chat-completions request per class (llm.py).

Answers of the `openai` source are cached under the project's scratch area, one JSON file per request, keyed by the
sha256 of everything that decides the answer (server, model, template, temperature, seed, max_tokens, class, n).
DVC already skips an unchanged stage; the cache is for the stage rerunning because only the bank's params (the
number of clusters, the prefix) or the CLIP changed: then no request is sent again. A cached answer is one that
parsed into n descriptions, so a malformed answer is asked for again next time. Delete `.wsss_scratch/llm_responses`
to ask afresh. The cache holds no key: the request identity has none, and answers pass through the redaction of
llm.py.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wsss_core.describe import DescriptionError
from wsss_core.describe.llm import ChatAnswer, ChatSettings, complete, parse_descriptions, request_body
from wsss_core.store.scratch import DEFAULT_SCRATCH

CACHE_DIR = DEFAULT_SCRATCH / "llm_responses"
FILE_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Descriptions:
    """The sentences of every class, in the dataset's class order, as the source gave them.

    `record` is what provenance keeps about the source (for `openai`: each class's raw answer); `stats` is for the
    run log only (requests sent, cache hits, seconds), never for the artifact.
    """

    sentences: dict[str, list[str]]
    record: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------- file


def file_descriptions(path: str | Path, class_names: Sequence[str], n: int) -> Descriptions:
    """Read `path` (class name -> list of n sentences) and check it against the dataset's foreground classes."""
    path = Path(path)
    data = _read_file(path)
    missing = [name for name in class_names if name not in data]
    if missing:
        raise DescriptionError(
            f"{path}: no descriptions for class {missing[0]!r}"
            + (f" (nor for {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f"; the dataset's classes: {', '.join(class_names)}"
        )
    extra = [str(name) for name in data if name not in class_names]
    if extra:
        raise DescriptionError(
            f"{path}: class {extra[0]!r} is not a class of the dataset (its classes: {', '.join(class_names)})"
        )
    sentences = {}
    for name in class_names:
        items = data[name]
        if not isinstance(items, list):
            raise DescriptionError(f"{path}: class {name!r}: expected a list of {n} sentences, got {items!r}")
        if len(items) != n:
            raise DescriptionError(f"{path}: class {name!r} has {len(items)} descriptions, the run's n is {n}")
        for position, item in enumerate(items, start=1):
            if not isinstance(item, str):
                raise DescriptionError(f"{path}: class {name!r}, description {position} is not text: {item!r}")
            if not item.strip():
                raise DescriptionError(f"{path}: class {name!r}, description {position} is empty")
        sentences[name] = list(items)
    return Descriptions(sentences, record={"file": path.as_posix()})


def _read_file(path: Path) -> dict[Any, Any]:
    import yaml

    if path.suffix.lower() not in FILE_SUFFIXES:
        raise DescriptionError(f"{path}: a descriptions file is YAML or JSON ({', '.join(FILE_SUFFIXES)})")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DescriptionError(f"{path}: descriptions file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DescriptionError(f"{path}: unreadable ({error})") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise DescriptionError(f"{path}: not valid {kind} ({error})") from None
    if not isinstance(data, dict):
        raise DescriptionError(f"{path}: expected a mapping of class names to lists of sentences")
    return data


# --------------------------------------------------------------------------------------------------------- openai


def cache_key(settings: ChatSettings, class_name: str, n: int) -> str:
    material = {**settings.identity(), "class_name": class_name, "n": n}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def openai_descriptions(
    settings: ChatSettings, class_names: Sequence[str], n: int, cache_dir: str | Path = CACHE_DIR
) -> Descriptions:
    """Ask the server for n descriptions of each class (or take its cached answer) and parse them."""
    from wsss_core.store.atomic import atomic_file

    cache_dir = Path(cache_dir)
    sentences, responses = {}, {}
    stats = {"requests": 0, "cached": 0, "request_seconds": []}
    for name in class_names:
        what = f"class {name!r}"
        key = cache_key(settings, name, n)
        answer = _cached(cache_dir / f"{key}.json")
        fetched = answer is None
        if fetched:
            start = time.perf_counter()
            answer = complete(settings, request_body(settings, name, n), what)
            stats["request_seconds"].append(round(time.perf_counter() - start, 3))
        stats["requests" if fetched else "cached"] += 1
        sentences[name] = parse_descriptions(answer.content, n, what, truncated=answer.finish_reason == "length")
        if fetched:  # only an answer that parsed: a malformed one is asked for again next time
            entry = {"request": {**settings.identity(), "class_name": name, "n": n}, "answer": asdict(answer)}
            with atomic_file(cache_dir / f"{key}.json", "w") as handle:
                handle.write(json.dumps(entry, sort_keys=True, indent=1) + "\n")
        responses[name] = {"content": answer.content, "model": answer.model}
    return Descriptions(sentences, record={"responses": responses}, stats=stats)


def _cached(path: Path) -> ChatAnswer | None:
    """A cached answer, or None when there is none or it is unreadable (then it is asked for again)."""
    try:
        answer = json.loads(path.read_text(encoding="utf-8"))["answer"]
        return ChatAnswer(answer["content"], answer.get("model"), answer.get("finish_reason"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return None


# ------------------------------------------------------------------------------------------------------- dispatch


def run_descriptions(
    run: dict[str, Any], class_names: Sequence[str], cache_dir: str | Path = CACHE_DIR
) -> Descriptions:
    """The descriptions of a describe run (validated params): its source, its n."""
    if run["source"] == "file":
        return file_descriptions(run["reads"], class_names, run["n"])
    if run["source"] == "openai":
        return openai_descriptions(ChatSettings.from_params(run["openai"]), class_names, run["n"], cache_dir)
    raise ValueError(f"unknown description source {run['source']!r}")
