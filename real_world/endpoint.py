"""An OpenAI-compatible chat endpoint (a local vLLM or llama.cpp server) and a cache of its replies.

`chat` sends one `POST {base_url}/chat/completions` with the standard library (no client package)
and returns the reply's text, or raises `EndpointError` saying why there is none: no reply within
the timeout, an HTTP error, a body that is not a chat completion, an empty reply, or one cut at
`max_tokens`. Callers turn that into a counted failure (an unlabeled document, a document left out).

`ReplyCache` keeps good replies on disk, one JSON file per text keyed by the text's sha256, in a
folder named for everything else that decides the reply (model, prompt, sampling), so that a
changed prompt or model never reads an old reply. Entries are written atomically: workers share one
cache and a killed run leaves no half entry. Failures are never cached, so a rerun retries them.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from medsafetyworld.errors import ConfigError
from medsafetyworld.storage import write_json_atomic

API_KEY_ENV = "MSW_LLM_API_KEY"  # sent as a bearer token when set (a vLLM server started with --api-key)


class EndpointError(Exception):
    """The endpoint gave no usable reply (timeout, HTTP error, malformed or empty reply)."""


@dataclass(frozen=True)
class Endpoint:
    """Where the model is served: `base_url` as OpenAI clients take it (vLLM: http://HOST:8000/v1,
    llama.cpp's llama-server: http://HOST:8080/v1), the served model's name, and the seconds a
    request may wait for its reply."""

    base_url: str
    model: str
    timeout: float = 60.0

    def __post_init__(self):
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"endpoint {self.base_url!r} is not an http(s) URL; give the server's base URL, "
                              f"e.g. http://127.0.0.1:8000/v1 for a local vLLM server")
        if not self.model:
            raise ConfigError("the endpoint needs the served model's name (--model-name)")
        if not float(self.timeout) > 0:
            raise ConfigError(f"timeout {self.timeout} is not a positive number of seconds")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _opener(url: str) -> urllib.request.OpenerDirector:
    # a proxy from the environment must not take requests meant for this machine's own server
    return urllib.request.build_opener(urllib.request.ProxyHandler({})) if _is_loopback(url) \
        else urllib.request.build_opener()


def chat(endpoint: Endpoint, messages: list[dict], *, max_tokens: int, temperature: float = 0.0,
         seed: int | None = None) -> str:
    """The text of the endpoint's reply to `messages`; EndpointError when there is none."""
    payload = {"model": endpoint.model, "messages": messages, "max_tokens": int(max_tokens),
               "temperature": float(temperature)}
    if seed is not None:
        payload["seed"] = int(seed)
    headers = {"Content-Type": "application/json"}
    if key := os.environ.get(API_KEY_ENV):
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(endpoint.url, data=json.dumps(payload).encode(), headers=headers,
                                     method="POST")
    try:
        with _opener(endpoint.url).open(request, timeout=endpoint.timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise EndpointError(f"HTTP {exc.code} from {endpoint.url}: {exc.read()[:200]!r}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise EndpointError(f"no reply from {endpoint.url} within {endpoint.timeout} s") from None
        raise EndpointError(f"cannot reach {endpoint.url}: {exc.reason}") from None
    except TimeoutError:
        raise EndpointError(f"no reply from {endpoint.url} within {endpoint.timeout} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise EndpointError(f"connection to {endpoint.url} failed: {type(exc).__name__}: {exc}") from None
    return reply_text(body, max_tokens)


def reply_text(body: bytes, max_tokens: int) -> str:
    """The message text of a chat completion body; EndpointError when it is malformed, empty or cut."""
    try:
        choice = json.loads(body)["choices"][0]
        content = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise EndpointError(f"malformed reply (not an OpenAI chat completion): {body[:200]!r}") from None
    if not isinstance(content, str) or not content.strip():
        raise EndpointError("empty reply")
    if choice.get("finish_reason") == "length":
        raise EndpointError(f"reply cut at max_tokens={max_tokens}")
    return content


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ReplyCache:
    """FOLDER/<kind>-<model>-<hash of namespace>/<key[:2]>/<key>.json, key = sha256 of the text."""

    def __init__(self, folder: str | Path, kind: str, namespace: dict):
        blob = json.dumps(namespace, sort_keys=True)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(namespace.get("model", "")))[-40:]
        self.root = Path(folder) / f"{kind}-{slug}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
        try:
            if not (self.root / "namespace.json").is_file():
                write_json_atomic(self.root / "namespace.json", namespace)  # what the replies depend on
        except OSError as exc:
            raise ConfigError(f"cannot write the LLM reply cache in {folder}: {exc.strerror or exc}; "
                              f"choose another cache folder") from None

    def _path(self, text: str) -> Path:
        key = text_key(text)
        return self.root / key[:2] / f"{key}.json"

    def get(self, text: str) -> dict | None:
        """The cached reply for `text`, or None (missing, or unreadable: then it is asked again)."""
        try:
            return json.loads(self._path(text).read_text("utf-8"))
        except (OSError, ValueError):
            return None

    def put(self, text: str, reply: dict) -> None:
        write_json_atomic(self._path(text), reply)
