"""A client for OpenAI-compatible chat-completions servers (OpenAI, vLLM, llama.cpp's server, Ollama's /v1), written
with the standard library only, and the parser that turns an answer into exactly n descriptions.

One request per class: POST {base_url}/chat/completions with the model, the filled-in prompt template, temperature,
seed and max_tokens. Servers answer 429 when busy and 5xx or a dropped connection when overloaded, so those are
retried with exponential backoff; any other HTTP error (a wrong key, an unknown model) is final at once.

The API key is read from the environment variable that `api_key_env` names, at the moment a request is sent, and is
held by nothing else: not by the settings (their repr shows only the variable's name), not by an error message
(every text that leaves this module passes through `_redact`), not by a response cache.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from wsss_core.describe import DescriptionError

_EXCERPT = 300  # characters of a server's answer quoted in an error message


@dataclass(frozen=True)
class ChatSettings:
    """How to reach the server and what to ask it (the `openai` sub-dict of a describe run).

    Arguments:
      base_url: the API root, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1.
      model: the model name the server knows.
      prompt_template: the user message; `{class_name}` and `{n}` are filled in (other braces stay as written).
      api_key_env: NAME of the environment variable holding the key; None or unset: no Authorization header.
      temperature, seed, max_tokens: sent as they are (seed None: not sent).
      retries: further attempts after a 429, a 5xx or a connection error.
      backoff_seconds: the wait before retry k (0-based) is backoff_seconds * 2**k.
      timeout_seconds: per request.
    """

    base_url: str
    model: str
    prompt_template: str
    api_key_env: str | None = "OPENAI_API_KEY"
    temperature: float = 0.0
    seed: int | None = 0
    max_tokens: int = 2048
    retries: int = 5
    backoff_seconds: float = 1.0
    timeout_seconds: float = 120.0

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> ChatSettings:
        return cls(**section)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def identity(self) -> dict[str, Any]:
        """Everything that decides the answer, and nothing secret: what a cached answer is keyed by."""
        keys = ("base_url", "model", "prompt_template", "temperature", "seed", "max_tokens")
        return {key: getattr(self, key) for key in keys}


def render_prompt(template: str, class_name: str, n: int) -> str:
    """The template with its two placeholders filled; plain replacement, so JSON examples in it keep their braces."""
    return template.replace("{class_name}", class_name).replace("{n}", str(n))


def request_body(settings: ChatSettings, class_name: str, n: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": settings.model,
        "messages": [{"role": "user", "content": render_prompt(settings.prompt_template, class_name, n)}],
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens,
    }
    if settings.seed is not None:
        body["seed"] = settings.seed
    return body


@dataclass(frozen=True)
class ChatAnswer:
    """The part of a chat completion kept: the text, the model the server says answered, why it stopped."""

    content: str
    model: str | None
    finish_reason: str | None


def _api_key(settings: ChatSettings) -> str | None:
    if not settings.api_key_env:
        return None
    return os.environ.get(settings.api_key_env) or None


def _redact(text: str, key: str | None) -> str:
    """`text` with the key blanked out: a server may echo a request, and error texts end up in logs."""
    return text.replace(key, "[api key]") if key else text


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


def complete(settings: ChatSettings, body: dict[str, Any], what: str) -> ChatAnswer:
    """Send one chat-completions request; retry 429, 5xx and connection errors with exponential backoff.

    `what` names the request in error messages (e.g. "class 'cat'"). Raises DescriptionError when the server refuses,
    keeps failing after `retries` retries, or answers something that is not a chat completion.
    """
    if not settings.url.startswith(("http://", "https://")):  # urllib would also open file:// and ftp:// URLs
        raise DescriptionError(f"{what}: base_url {settings.base_url!r} is not an http:// or https:// URL")
    key = _api_key(settings)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode()
    last = ""
    for attempt in range(settings.retries + 1):
        if attempt:
            time.sleep(settings.backoff_seconds * 2 ** (attempt - 1))
        request = urllib.request.Request(settings.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=settings.timeout_seconds) as response:
                raw = response.read()
            break
        except urllib.error.HTTPError as error:  # before URLError, its base class
            detail = _redact(_read_excerpt(error), key)
            if not _retryable(error.code):
                hint = _status_hint(error.code, settings)
                raise DescriptionError(
                    f"{what}: {settings.url} answered HTTP {error.code} {error.reason}{hint}: {detail}"
                ) from None
            last = f"HTTP {error.code} {error.reason}: {detail}"
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:  # refused, reset, timed out
            reason = error.reason if isinstance(error, urllib.error.URLError) else error
            last = _redact(f"{type(error).__name__}: {reason}", key)
    else:
        raise DescriptionError(
            f"{what}: {settings.url} failed {settings.retries + 1} times (retries: {settings.retries}); last: {last}"
        )
    return _chat_answer(_redact(raw.decode("utf-8", errors="replace"), key), settings.url, what)


def _read_excerpt(error: urllib.error.HTTPError) -> str:
    try:
        text = error.read(_EXCERPT * 4).decode("utf-8", errors="replace")
    except (OSError, http.client.HTTPException):
        return "(no body)"
    return " ".join(text.split())[:_EXCERPT] or "(no body)"


def _status_hint(status: int, settings: ChatSettings) -> str:
    if status in (401, 403):
        where = f"environment variable {settings.api_key_env}" if settings.api_key_env else "no key (api_key_env null)"
        return f" (check the API key: {where})"
    if status == 404:
        return " (check base_url and model)"
    return ""


def _chat_answer(text: str, url: str, what: str) -> ChatAnswer:
    try:
        answer = json.loads(text)
        choice = answer["choices"][0]
        content = choice["message"]["content"]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError):
        raise DescriptionError(f"{what}: {url} did not answer a chat completion: {text[:_EXCERPT]!r}") from None
    if not isinstance(content, str):
        raise DescriptionError(f"{what}: {url} answered no text (message content {content!r})")
    model = answer.get("model") if isinstance(answer.get("model"), str) else None
    finish = choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None
    return ChatAnswer(content, model, finish)


# ------------------------------------------------------------------------------------------------------- parsing

# A list item: "1.", "1)", "(1)", "1:" or a bullet ("-", "*", "•"), then the text.
_ITEM = re.compile(r"^\s*(?:\(?\d{1,3}[.):]|[-*•])\s+(?P<text>\S.*?)\s*$")
_FENCE = re.compile(r"```[a-zA-Z]*\s*\n(?P<body>.*?)```", re.DOTALL)
_QUOTES = ('"', "'", "\u201c", "\u201d")


def parse_descriptions(content: str, n: int, what: str, *, truncated: bool = False) -> list[str]:
    """Exactly `n` descriptions from an answer, read as the first of these that fits: the answer is a JSON list of
    strings (bare, in a code fence, or the one list of a JSON object); it holds numbered or bulleted list items
    (preambles such as "Here are 20 descriptions:" are not items and are skipped); it holds a JSON list inside prose;
    every non-empty line is one. A count other than `n` or an empty item is a DescriptionError naming `what`."""
    lines = [line for line in content.splitlines() if line.strip()]
    fenced = _FENCE.search(content)
    items = _json_list(fenced.group("body") if fenced else content)
    if items is None:
        items = [m.group("text") for m in map(_ITEM.match, lines) if m is not None] or None
    if items is None:
        start, end = content.find("["), content.rfind("]")
        items = _json_list(content[start : end + 1]) if 0 <= start < end else None
    items = [_clean(item) for item in (lines if items is None else items)]
    if len(items) != n or not all(items):
        found = f"{len(items)} descriptions" if all(items) else "an empty description"
        cut = " (the answer was cut off at max_tokens)" if truncated else ""
        raise DescriptionError(
            f"{what}: expected {n} descriptions, found {found} in the answer{cut}; it begins: "
            f"{content.strip()[:_EXCERPT]!r}"
        )
    return items


def _json_list(text: str) -> list[str] | None:
    """The list of strings `text` is in JSON (or the one list of a JSON object), else None."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(value, dict):
        lists = [item for item in value.values() if isinstance(item, list)]
        value = lists[0] if len(lists) == 1 else None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def _clean(item: str) -> str:
    """One description without the quotes and trailing commas a list copied from code carries."""
    text = item.strip().rstrip(",").strip()
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text
