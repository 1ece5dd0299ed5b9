"""The describe stage (ExCEL's attribute bank): the chat-completions client against a local server (retries, errors,
the key kept out of everything, the response cache), answer parsing, the file source's checks, the KMeans bank, and
the stage end to end on a tiny random CLIP: byte-identical reruns, no partial artifact on bad input.

Nothing here touches the network beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import ROOT
from tests.test_stages import invoke, run_ok
from wsss_core.describe import DescriptionError
from wsss_core.describe.bank import (
    AttributeBank,
    check_clusters,
    cluster_bank,
    compose_texts,
    load_attribute_bank,
    write_bank,
)
from wsss_core.describe.llm import ChatSettings, parse_descriptions, render_prompt
from wsss_core.describe.sources import file_descriptions, openai_descriptions
from wsss_core.hashing import sha256_path
from wsss_core.params import ParamsError
from wsss_core.store.seal import verify_content

KEY_ENV = "WSSS_TEST_LLM_KEY"
KEY = "sk-test-Zq8v1DISTINCTIVEkey7731"  # must turn up in no file, log or error
TEMPLATE = "Describe {class_name} in {n} lines."
SYNTHETIC = ("disc", "square", "triangle", "star", "ring", "cross")


def numbered(class_name: str, n: int) -> str:
    lines = [f"{i + 1}. it is a {class_name} seen with detail number {i} and shade {i * 7 % 5}." for i in range(n)]
    return "Here they are:\n" + "\n".join(lines)


def completion(content: str, finish_reason: str = "stop") -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "tiny-llm-0001",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
    }


class ChatServer:
    """A chat-completions server on 127.0.0.1 in a thread. `reply(body, call)` gives (status, JSON answer) of each
    request (`call` counts from 0); by default a numbered list for the class the test template names."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.reply: Callable[[dict, int], tuple[int, dict]] = self.answer_numbered
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, answer = server.reply(body, len(server.requests) - 1)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @staticmethod
    def answer_numbered(body: dict, call: int) -> tuple[int, dict]:
        class_name, n = re.fullmatch(r"Describe (.+) in (\d+) lines\.", body["messages"][-1]["content"]).groups()
        return 200, completion(numbered(class_name, int(n)))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch) -> Iterator[ChatServer]:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # 127.0.0.1 directly, never through a proxy
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv(KEY_ENV, KEY)
    chat = ChatServer()
    yield chat
    chat.close()


def chat_settings(server: ChatServer, **changes) -> ChatSettings:
    settings = {
        "base_url": server.base_url,
        "model": "tiny-llm",
        "prompt_template": TEMPLATE,
        "api_key_env": KEY_ENV,
        "temperature": 0.7,
        "seed": 3,
        "max_tokens": 400,
        "retries": 2,
        "backoff_seconds": 0.0,
        "timeout_seconds": 10.0,
    }
    return ChatSettings(**{**settings, **changes})


def assert_no_key(*texts: str) -> None:
    for text in texts:
        assert KEY not in text


def assert_no_key_in_files(*folders: Path) -> None:
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                assert KEY.encode() not in path.read_bytes(), path


# --------------------------------------------------------------------------------------------------- the client


def test_openai_source_asks_each_class_once_over_http(server, tmp_path):
    settings = chat_settings(server)
    result = openai_descriptions(settings, ["cat", "potted plant"], 4, tmp_path / "cache")
    assert result.sentences == {
        name: [f"it is a {name} seen with detail number {i} and shade {i * 7 % 5}." for i in range(4)]
        for name in ("cat", "potted plant")
    }
    assert result.stats["requests"] == 2 and result.stats["cached"] == 0
    assert result.record["responses"]["cat"] == {"content": numbered("cat", 4), "model": "tiny-llm-0001"}
    request = server.requests[1]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    assert request["body"] == {
        "model": "tiny-llm",
        "messages": [{"role": "user", "content": "Describe potted plant in 4 lines."}],
        "temperature": 0.7,
        "seed": 3,
        "max_tokens": 400,
    }
    assert KEY_ENV in repr(settings) and KEY not in repr(settings)  # the settings hold the variable's name only
    assert_no_key_in_files(tmp_path)


def test_no_key_variable_sends_no_authorization(server, tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    openai_descriptions(chat_settings(server), ["cat"], 2, tmp_path)
    assert "Authorization" not in server.requests[0]["headers"]
    openai_descriptions(chat_settings(server, api_key_env=None, seed=None), ["dog"], 2, tmp_path)
    assert "Authorization" not in server.requests[1]["headers"] and "seed" not in server.requests[1]["body"]


def test_a_busy_server_is_asked_again(server, tmp_path):
    def busy_first(body, call):
        return (429, {"error": {"message": "rate limited"}}) if call == 0 else server.answer_numbered(body, call)

    server.reply = busy_first
    result = openai_descriptions(chat_settings(server), ["cat"], 3, tmp_path)
    assert len(result.sentences["cat"]) == 3 and len(server.requests) == 2


def test_a_failing_server_ends_in_a_clear_error_without_the_key(server, tmp_path):
    server.reply = lambda body, call: (500, {"error": f"boom; you sent Bearer {KEY}"})  # a server echoing the key
    with pytest.raises(DescriptionError, match=r"class 'cat': .* failed 3 times \(retries: 2\); last: HTTP 500") as err:
        openai_descriptions(chat_settings(server), ["cat"], 3, tmp_path)
    assert len(server.requests) == 3 and "[api key]" in str(err.value)
    assert_no_key(str(err.value), repr(err.value))
    assert not list(tmp_path.iterdir())  # nothing cached


def test_a_refused_key_is_final_and_names_the_variable(server, tmp_path):
    server.reply = lambda body, call: (401, {"error": f"invalid key {KEY}"})
    with pytest.raises(DescriptionError, match=f"HTTP 401 .*check the API key: environment variable {KEY_ENV}") as err:
        openai_descriptions(chat_settings(server), ["cat"], 3, tmp_path)
    assert len(server.requests) == 1  # not retried
    assert_no_key(str(err.value))


def test_an_unreachable_server_is_retried_then_named(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = ChatSettings(f"http://127.0.0.1:{port}/v1", "m", TEMPLATE, retries=1, backoff_seconds=0.0)
    with pytest.raises(DescriptionError, match=rf"127\.0\.0\.1:{port}/v1/chat/completions failed 2 times"):
        openai_descriptions(settings, ["cat"], 3, tmp_path)


def test_only_http_urls_are_opened(tmp_path):
    settings = ChatSettings(f"file://{tmp_path}", "m", TEMPLATE)
    with pytest.raises(DescriptionError, match="class 'cat': base_url 'file://.*' is not an http:// or https:// URL"):
        openai_descriptions(settings, ["cat"], 3, tmp_path)


def test_a_malformed_answer_names_its_class_and_is_not_cached(server, tmp_path):
    def short_for_dog(body, call):
        if "dog" in body["messages"][0]["content"]:
            return 200, completion("1. it barks.\n2. it has four legs.", finish_reason="length")
        return server.answer_numbered(body, call)

    server.reply = short_for_dog
    with pytest.raises(
        DescriptionError, match=r"class 'dog': expected 3 descriptions, found 2 .*cut off at max_tokens"
    ):
        openai_descriptions(chat_settings(server), ["cat", "dog"], 3, tmp_path)
    assert len(list(tmp_path.iterdir())) == 1  # cat's answer is kept, dog's is asked again next time
    server.reply = lambda body, call: (200, {"not": "a completion"})
    with pytest.raises(DescriptionError, match="class 'dog': .* did not answer a chat completion"):
        openai_descriptions(chat_settings(server), ["cat", "dog"], 3, tmp_path)


def test_a_cached_answer_sends_no_request(server, tmp_path):
    first = openai_descriptions(chat_settings(server), ["cat", "dog"], 3, tmp_path)
    assert len(server.requests) == 2
    again = openai_descriptions(chat_settings(server, retries=0, timeout_seconds=1.0), ["cat", "dog"], 3, tmp_path)
    assert len(server.requests) == 2 and again.stats == {"requests": 0, "cached": 2, "request_seconds": []}
    assert again.sentences == first.sentences and again.record == first.record
    openai_descriptions(chat_settings(server, temperature=0.2), ["cat"], 3, tmp_path)  # another answer: asked
    assert len(server.requests) == 3
    assert_no_key_in_files(tmp_path)


# -------------------------------------------------------------------------------------------------------- parsing

ITEMS = ["it has wings.", "it is often white.", "it has a tail."]


@pytest.mark.parametrize(
    "answer",
    [
        "1. it has wings.\n2. it is often white.\n3. it has a tail.",
        "Sure! Here are three:\n\n1) it has wings.\n2) it is often white.\n3) it has a tail.\n",
        "- it has wings.\n- it is often white.\n* it has a tail.",
        "• it has wings.\n• it is often white.\n• it has a tail.",
        '1. "it has wings.",\n2. "it is often white.",\n3. "it has a tail."',
        json.dumps(ITEMS),
        "```json\n" + json.dumps(ITEMS, indent=2) + "\n```",
        json.dumps({"descriptions": ITEMS}),
        "The list: " + json.dumps(ITEMS) + " Hope it helps.",
        "it has wings.\nit is often white.\n\nit has a tail.\n",
        'Three facts, as ["a", "list"] would not do:\n1. it has wings.\n2. it is often white.\n3. it has a tail.',
    ],
    ids=["numbered", "preamble", "bullets", "dots", "quoted", "json", "fenced", "object", "inline", "lines", "items"],
)
def test_answers_in_every_common_list_shape_parse(answer):
    assert parse_descriptions(answer, 3, "class 'x'") == ITEMS


@pytest.mark.parametrize(
    ("answer", "found"),
    [
        ("1. a\n2. b", "found 2 descriptions"),
        ("1. a\n2. b\n3. c\n4. d", "found 4 descriptions"),
        (json.dumps(["a", "", "c"]), "found an empty description"),
        ("I can't help with that.", "found 1 descriptions"),
    ],
)
def test_answers_of_the_wrong_shape_are_refused_naming_the_class(answer, found):
    with pytest.raises(DescriptionError, match=f"class 'boat': expected 3 descriptions, {found}"):
        parse_descriptions(answer, 3, "class 'boat'")


def test_the_template_keeps_its_other_braces():
    assert render_prompt('Give {n} facts on {class_name} as {"items": [...]}', "cat", 5) == (
        'Give 5 facts on cat as {"items": [...]}'
    )


# ------------------------------------------------------------------------------------------------------------ file


def test_yaml_and_json_files_give_the_same_descriptions(tmp_path):
    data = {"cat": ["  It purrs.", "it has whiskers"], "dog": ["it barks.", "it wags its tail."]}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"dog": data["dog"], "cat": data["cat"]}))
    (tmp_path / "d.json").write_text(json.dumps(data))
    from_yaml = file_descriptions(tmp_path / "d.yaml", ("cat", "dog"), 2)
    assert from_yaml.sentences == data and list(from_yaml.sentences) == ["cat", "dog"]  # dataset order, raw text
    assert file_descriptions(tmp_path / "d.json", ("cat", "dog"), 2).sentences == data


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"cat": ["a", "b"]}, "no descriptions for class 'dog'"),
        ({"cat": ["a", "b"], "dog": ["c", "d"], "cow": ["e", "f"]}, "class 'cow' is not a class of the dataset"),
        ({"cat": ["a", "b"], "dog": ["c"]}, "class 'dog' has 1 descriptions, the run's n is 2"),
        ({"cat": ["a", "  "], "dog": ["c", "d"]}, "class 'cat', description 2 is empty"),
        ({"cat": ["a", 3], "dog": ["c", "d"]}, "class 'cat', description 2 is not text"),
        ({"cat": "a b", "dog": ["c", "d"]}, "class 'cat': expected a list of 2 sentences"),
        (["cat", "dog"], "expected a mapping of class names"),
        ("cat: [a, b\n", "not valid YAML"),
    ],
    ids=["missing", "extra", "count", "empty", "not-text", "not-list", "not-mapping", "bad-yaml"],
)
def test_a_wrong_file_is_named_with_its_class(tmp_path, content, message):
    path = tmp_path / "mine.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    with pytest.raises(DescriptionError, match=re.escape(f"{path}: {message}")):
        file_descriptions(path, ("cat", "dog"), 2)


def test_a_missing_or_foreign_file_is_named(tmp_path):
    with pytest.raises(DescriptionError, match="nothing.yaml: descriptions file not found"):
        file_descriptions(tmp_path / "nothing.yaml", ("cat",), 1)
    (tmp_path / "d.txt").write_text("cat: [a]")
    with pytest.raises(DescriptionError, match=r"d\.txt: a descriptions file is YAML or JSON"):
        file_descriptions(tmp_path / "d.txt", ("cat",), 1)
    (tmp_path / "d.json").write_text("{'cat': ['a']}")
    with pytest.raises(DescriptionError, match=r"d\.json: not valid JSON"):
        file_descriptions(tmp_path / "d.json", ("cat",), 1)


def test_the_shipped_synthetic_descriptions_fit_the_demo_classes():
    from wsss_core.data.synthetic import SYNTHETIC_CLASSES

    result = file_descriptions(ROOT / "data" / "descriptions" / "synthetic.yaml", SYNTHETIC_CLASSES[1:], 20)
    sentences = [s for name in SYNTHETIC_CLASSES[1:] for s in result.sentences[name]]
    assert len(sentences) == 120 and len(set(sentences)) == 120


# ------------------------------------------------------------------------------------------------------------ bank


def test_texts_are_prefixed_and_lower_cased_as_excel_does():
    assert compose_texts("Cat", ["  It has WHISKERS. "], "a clean origami {class_name}. ") == [
        "a clean origami cat. it has whiskers."
    ]
    assert compose_texts("cat", ["it purrs"], "") == ["it purrs"]
    published = "a clean origami aeroplane. it has wings that extend out from both sides of the main body."
    assert compose_texts("aeroplane", [published], "a clean origami {class_name}. ") == [published]  # not doubled


def test_kmeans_flags_mark_the_clusters_of_each_class():
    # Three tight groups of points at A, B and C. Class 0 lies in A twice, class 1 in A and B, class 2 in C twice.
    a, b, c = np.eye(3, dtype=np.float32)
    jitter = np.float32(0.01) * np.arange(6, dtype=np.float32)[:, None] * np.array([0, 0, 1], np.float32)
    points = np.stack([a, a, a, b, c, c]) + jitter
    features, flags, labels = cluster_bank(points, np.array([0, 0, 1, 1, 2, 2]), 3, clusters=3)
    cluster_a, cluster_b, cluster_c = labels[0], labels[3], labels[4]
    assert (
        len({cluster_a, cluster_b, cluster_c}) == 3 and labels[1] == labels[2] == cluster_a and labels[5] == cluster_c
    )
    expected = np.zeros((3, 3), np.float32)
    expected[0, cluster_a] = expected[1, cluster_a] = expected[1, cluster_b] = expected[2, cluster_c] = 1
    np.testing.assert_array_equal(flags, expected)
    assert features.shape == (3, 3) and features.dtype == np.float32  # (D, B): centres as columns
    np.testing.assert_allclose(features[:, cluster_b], points[3], atol=1e-6)
    np.testing.assert_allclose(features[:, cluster_a], points[:3].mean(axis=0), atol=1e-6)


def test_more_clusters_than_distinct_descriptions_is_refused():
    points = np.eye(4, dtype=np.float32)
    check_clusters(4, points, "k")
    with pytest.raises(DescriptionError, match="k: 5 clusters, but only 4 descriptions to cluster"):
        check_clusters(5, points, "k")
    with pytest.raises(DescriptionError, match="give only 3 distinct embeddings"):
        check_clusters(4, np.concatenate([points[:3], points[:1]]), "k")


def test_the_bank_loads_back_and_writes_the_same_bytes(tmp_path):
    rng = np.random.default_rng(0)
    bank = AttributeBank(rng.random((8, 5), dtype=np.float32), np.eye(2, 5, dtype=np.float32), ("cat", "dog"))
    write_bank(tmp_path / "one.zarr", bank)
    write_bank(tmp_path / "two.zarr", bank)
    assert sha256_path(tmp_path / "one.zarr") == sha256_path(tmp_path / "two.zarr")
    loaded = load_attribute_bank(tmp_path / "one.zarr")
    np.testing.assert_array_equal(loaded.attr_features, bank.attr_features)
    np.testing.assert_array_equal(loaded.attr_flag, bank.attr_flag)
    assert loaded.class_names == ("cat", "dog")
    from wsss_core.store.table import ArtifactError

    with pytest.raises(ArtifactError, match="no attribute bank"):
        load_attribute_bank(tmp_path)


# ----------------------------------------------------------------------------------------------------- the stage


def write_params(project: Path, runs: dict) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    # The shipped runs stay: other stages of the shipped params read them.
    params["describe"] = {"device": "cpu", "runs": {**params["describe"]["runs"], **runs}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def indexed(project) -> Path:
    """The tiny project with its synthetic data and index (the six demo classes)."""
    run_ok("demo_data")
    run_ok("prepare")
    return project


FILE_RUN = {"source": "file", "reads": str(ROOT / "data" / "descriptions" / "synthetic.yaml"), "clusters": 24}


def test_the_file_stage_writes_a_sealed_reproducible_bank(indexed):
    write_params(indexed, {"demo": FILE_RUN})
    run_ok("describe", "demo")
    out = indexed / "artifacts" / "descriptions_demo"
    assert sorted(path.name for path in out.iterdir()) == ["bank.zarr", "descriptions.parquet", "provenance.json"]

    table = pq.read_table(out / "descriptions.parquet")
    assert table.column_names == ["class_index", "class_name", "position", "sentence", "text", "cluster"]
    assert [str(field.type) for field in table.schema] == ["int32", "string", "int32", "string", "string", "int32"]
    rows = table.to_pylist()
    assert len(rows) == 120 and rows[0]["class_index"] == 1 and rows[-1]["class_index"] == 6
    assert rows[20] == {**rows[20], "class_name": "square", "position": 0}
    shipped = yaml.safe_load(Path(FILE_RUN["reads"]).read_text())
    assert rows[21]["sentence"] == shipped["square"][1]
    assert rows[21]["text"] == "a clean origami square. " + shipped["square"][1].lower()

    bank = load_attribute_bank(out)
    assert bank.attr_features.shape == (32, 24) and bank.attr_flag.shape == (6, 24)  # tiny CLIP: D = 32
    assert bank.class_names == SYNTHETIC
    expected = np.zeros((6, 24), np.float32)
    for row in rows:
        expected[row["class_index"] - 1, row["cluster"]] = 1
    np.testing.assert_array_equal(bank.attr_flag, expected)

    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["stage"] == "describe_demo" and provenance["details"]["source"] == "file"
    assert provenance["params"]["describe.runs.demo"]["clusters"] == 24
    assert set(provenance["upstream"]) == {"descriptions", "index"}
    assert verify_content(out)[0] == "OK"

    # the same inputs, another output: the same bytes
    run_ok("describe", "demo", "--out", "artifacts/again")
    assert sha256_path(indexed / "artifacts" / "again") == sha256_path(out)
    for name in ("descriptions.parquet", "provenance.json"):
        assert (indexed / "artifacts" / "again" / name).read_bytes() == (out / name).read_bytes()


def test_the_openai_stage_keeps_the_key_out_and_asks_nothing_twice(indexed, server):
    chat = {"base_url": server.base_url, "model": "tiny-llm", "api_key_env": KEY_ENV, "prompt_template": TEMPLATE}
    chat.update(backoff_seconds=0.0, retries=1)
    run = {"source": "openai", "reads": "artifacts/index", "n": 5, "clusters": 12, "openai": chat}
    write_params(indexed, {"llm": run})
    run_ok("describe", "llm")
    assert len(server.requests) == 6
    out = indexed / "artifacts" / "descriptions_llm"
    details = json.loads((out / "provenance.json").read_text())["details"]
    assert details["model"] == "tiny-llm" and details["base_url"] == server.base_url
    assert details["responses"]["star"] == {"content": numbered("star", 5), "model": "tiny-llm-0001"}
    assert len(details["prompt_template_sha256"]) == 64
    rows = pq.read_table(out / "descriptions.parquet").to_pylist()
    assert rows[5]["sentence"] == "it is a square seen with detail number 0 and shade 0."
    log = json.loads((indexed / "logs" / "describe_llm.json").read_text())
    assert log["requests"] == 6 and log["cached"] == 0 and log["seconds_per_request"] < 5

    before = sha256_path(out)
    run["clusters"], run["prefix"] = 8, "a photo of a {class_name}. "  # only the bank changes: no request
    write_params(indexed, {"llm": run})
    run_ok("describe", "llm")
    assert len(server.requests) == 6 and sha256_path(out) != before
    assert load_attribute_bank(out).attr_features.shape == (32, 8)
    assert json.loads((indexed / "logs" / "describe_llm.json").read_text())["cached"] == 6

    server.reply = lambda body, call: (503, {"error": f"overloaded, key {KEY}"})
    run["n"] = 4  # new questions, and the server fails: a clear error, the old artifact untouched, no key anywhere
    write_params(indexed, {"llm": run})
    result = invoke("describe", "llm")
    assert result.exit_code == 1 and "failed 2 times" in result.output
    assert_no_key(result.output)
    assert load_attribute_bank(out).attr_features.shape == (32, 8)
    assert_no_key_in_files(indexed)


def test_bad_input_fails_the_stage_and_leaves_no_artifact(indexed, tmp_path):
    broken = yaml.safe_load(Path(FILE_RUN["reads"]).read_text())
    del broken["ring"]
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    write_params(indexed, {"bad": {**FILE_RUN, "reads": str(tmp_path / "broken.yaml")}})
    result = invoke("describe", "bad")
    assert result.exit_code == 1 and "broken.yaml: no descriptions for class 'ring'" in result.output
    assert [path.name for path in (indexed / "artifacts").iterdir()] == ["index"]  # nothing half made

    write_params(indexed, {"big": {**FILE_RUN, "clusters": 121}})
    result = invoke("describe", "big")
    assert result.exit_code == 1
    assert (
        "describe.runs.big.clusters: 121 attributes, but 6 classes x n=20 give only 120 descriptions" in result.output
    )
    assert [path.name for path in (indexed / "artifacts").iterdir()] == ["index"]


def test_a_key_pasted_into_params_is_refused_unseen(indexed, server):
    chat = {"base_url": server.base_url, "model": "m", "api_key_env": KEY, "prompt_template": TEMPLATE}
    write_params(indexed, {"llm": {"source": "openai", "reads": "artifacts/index", "openai": chat}})
    result = invoke("describe", "llm")
    assert result.exit_code == 1 and "api_key_env: must be the NAME of an environment variable" in result.output
    assert_no_key(result.output) and not server.requests


# ---------------------------------------------------------------------------------------------- params, pipeline


def test_describe_runs_are_stages_of_the_pipeline(tmp_path):
    from wsss_core.params import load_params
    from wsss_core.params.pipeline import pipeline_problems, pipeline_stages

    runs = {
        "llm": {"source": "openai", "reads": "artifacts/index", "openai": {"model": "m"}},
        "mine": {"source": "file", "reads": "data/descriptions/synthetic.yaml", "clusters": 24},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"describe": {"runs": runs}}))
    params = load_params(tmp_path / "params.yaml")
    assert params["describe"]["runs"]["mine"]["prefix"] == "a clean origami {class_name}. "
    assert "openai" not in params["describe"]["runs"]["mine"]  # a file run has no LLM settings
    assert params["describe"]["runs"]["llm"]["openai"]["api_key_env"] == "OPENAI_API_KEY"
    stages = {stage.name: stage for stage in pipeline_stages(params)}
    assert stages["describe@mine"].writes == ("artifacts/descriptions_mine",)
    assert stages["describe@mine"].reads["describe.runs.mine.reads"] == "data/descriptions/synthetic.yaml"
    assert [p for p in pipeline_problems(params, files=False) if p.startswith("describe")] == []

    runs["llm"]["reads"], runs["mine"]["reads"] = "data/descriptions/synthetic.yaml", "artifacts/index"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"describe": {"runs": runs}}))
    problems = pipeline_problems(load_params(tmp_path / "params.yaml"), files=False)
    assert [p for p in problems if p.startswith("describe")] == [
        "describe.runs.llm.reads: 'data/descriptions/synthetic.yaml' is not artifacts/index (an openai run reads only "
        "the class names of the index)",
        "describe.runs.mine.reads: 'artifacts/index' is not a descriptions file (.yaml, .yml or .json)",
    ]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"describe": {"runs": {"x": {"source": "gpt"}}}}))
    with pytest.raises(ParamsError, match="describe.runs.x.source: 'gpt' is not one of: openai, file"):
        load_params(tmp_path / "params.yaml")


def test_dvc_runs_a_describe_stage_per_run_after_its_inputs(tmp_path):
    from tests.conftest import small_params
    from tests.test_dvc_pipeline import copy_pipeline, demo_clip_params, dvc

    copy_pipeline(tmp_path)
    params = demo_clip_params(small_params())
    params["describe"] = {"runs": {"mine": {**FILE_RUN, "reads": "data/descriptions/synthetic.yaml"}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert dvc(tmp_path, "stage", "list", "describe@mine").split() == [
        "describe@mine",
        "Outputs",
        "artifacts/descriptions_mine",
    ]
    edges = re.findall(r'"([^"]+)" -> "([^"]+)"', dvc(tmp_path, "dag", "--dot"))
    assert sorted(source for source, target in edges if target == "describe@mine") == [
        "demo/dvc.yaml:demo_clip",  # the CLIP checkpoint
        "prepare",  # the index: the class names
    ]
