"""The api as the command line sees it: base URL and key from the environment or the config file,
one httpx client, errors turned into one readable line.

Reads `CC_API_URL`, `CC_API_KEY`, `CC_AGENT_ID` and `$XDG_CONFIG_HOME/callcenter/config.toml`
(default `~/.config/callcenter/config.toml`, keys `url`, `key`, `agent_id`); the environment wins.
Writes nothing.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"


class ApiError(Exception):
    """A refused or failed request, with the api's own explanation."""


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "callcenter" / "config.toml"


@dataclass(frozen=True)
class Config:
    """Where the api is and which key to send (environment or config file)."""

    url: str
    key: str | None
    agent_id: str | None

    @classmethod
    def load(cls) -> Config:
        path = config_path()
        data: dict[str, Any] = tomllib.loads(path.read_text()) if path.is_file() else {}
        return cls(url=os.environ.get("CC_API_URL") or str(data.get("url") or DEFAULT_URL),
                   key=os.environ.get("CC_API_KEY") or data.get("key"),
                   agent_id=os.environ.get("CC_AGENT_ID") or data.get("agent_id"))


def explain(r: httpx.Response) -> str:
    """One line from an error answer: a problem's title/detail, FastAPI's detail, or the text."""
    try:
        body = r.json()
    except ValueError:
        return f"HTTP {r.status_code}: {r.text[:300]}"
    if isinstance(body, dict):
        detail = body.get("detail", body)
        if isinstance(detail, list):  # validation errors: where and what
            detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" for d in detail)
        return f"HTTP {r.status_code}: {detail}"
    return f"HTTP {r.status_code}: {json.dumps(body)[:300]}"


class Api:
    """A small HTTP client of the api: each call returns the JSON or raises with the problem the api sent."""

    def __init__(self, config: Config, timeout: float = 15.0) -> None:
        headers = {"Authorization": f"Bearer {config.key}"} if config.key else {}
        self.http = httpx.Client(base_url=config.url, headers=headers, timeout=timeout)
        self.config = config

    def call(self, method: str, path: str, *, json_body: Any = None, params: dict[str, Any] | None = None) -> Any:
        try:
            r = self.http.request(method, path, json=json_body,
                                  params={k: v for k, v in (params or {}).items() if v is not None})
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach the api at {self.config.url}: {exc}") from None
        if r.status_code >= 400:
            hint = " (set CC_API_KEY or key in the config file)" if r.status_code == 401 and not self.config.key else ""
            raise ApiError(explain(r) + hint)
        return r.json() if r.content else None

    def items(self, path: str, *, params: dict[str, Any] | None = None, most: int | None = None) -> list[Any]:
        """Every item of a paged list (`{"items", "next_cursor"}`), following the cursors; at most `most`."""
        items: list[Any] = []
        cursor = None
        while True:
            page = self.call("GET", path, params={**(params or {}), "cursor": cursor})
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None or (most is not None and len(items) >= most):
                return items[:most]

    def events(self, types: list[str], last_id: str | None = None) -> Iterator[dict[str, Any]]:
        """The live feed: one dict per SSE event (id, event, data), until the server ends it."""
        headers = {"Last-Event-ID": last_id} if last_id else {}
        params = {"types": ",".join(types)} if types else {}
        try:
            with self.http.stream("GET", "/v1/events", params=params, headers=headers,
                                  timeout=httpx.Timeout(15.0, read=None)) as r:
                if r.status_code >= 400:
                    r.read()
                    raise ApiError(explain(r))
                event: dict[str, Any] = {}
                for line in r.iter_lines():
                    if not line:
                        if "data" in event:
                            yield event
                        event = {}
                    elif line.startswith(":"):
                        continue  # heartbeat / comment
                    else:
                        field, _, value = line.partition(":")
                        event[field] = value.removeprefix(" ")
        except httpx.HTTPError as exc:
            raise ApiError(f"the event feed at {self.config.url} failed: {exc}") from None
