"""`Idempotency-Key` on every POST of /v1, as pure ASGI middleware: the same request sent again with the
same key has one effect, and gets the first answer again (with `Idempotent-Replayed: true`).

Reads and writes `cc:{t}:idem:<digest>` (`Keys.idempotency`), one string per key and caller: the
digest is SHA-256 of the caller's Authorization header and the key, so two callers never share a
key (and no credential is stored). While the first request runs the record says `running` and lives
`RUNNING_TTL_S` (a process that dies mid-request does not block the key for a day); its answer is
then kept `TTL_S` (24 h). Only answers of a decided outcome are kept: a 5xx, a 401 or a 403 drops the
record, so a retry runs again. The same key with another request (method, path, query or body
differ) is a 422 `idempotency-key-reused`; a key whose first request still runs is a 409
`idempotency-in-progress`. A POST without the header is not affected.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from callcenter.redis import REDIS_DOWN
from callcenter_api.errors import ProblemResponse, problem

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
KEY_PATTERN = r"^[!-~]{1,255}$"  # visible ASCII, as for a token
TTL_S = 24 * 3600
RUNNING_TTL_S = 60
# the headers of an answer that are replayed with it
KEPT_HEADERS = (b"content-type", b"etag", b"location")


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


class Idempotency:
    """ASGI middleware: replays the answer of a POST sent again with the same Idempotency-Key."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        key = headers.get(HEADER)
        if key is None:
            await self.app(scope, receive, send)
            return
        if not re.fullmatch(KEY_PATTERN, key):
            await problem(422, "validation-failed", f"{HEADER} must be 1-255 visible ASCII characters")(
                scope, receive, send)
            return
        body = await _read_body(receive)
        services = scope["app"].state.services
        caller = headers.get("authorization", "").encode()
        record_key = services.store.keys.idempotency(_digest(caller, key.encode()))
        fingerprint = _digest(scope["method"].encode(), scope["path"].encode(), scope["query_string"], body)
        try:
            refusal = await _claim(services.redis, record_key, fingerprint)
            if refusal is None and await _replayed(services.redis, record_key, fingerprint, send):
                return
        except REDIS_DOWN:
            refusal = problem(503, "redis-unavailable", "redis is unavailable, retry later")
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self._run(scope, body, send, services.redis, record_key, fingerprint)

    async def _run(self, scope: Scope, body: bytes, send: Send, redis: Any, record_key: str,
                   fingerprint: str) -> None:
        sent = False
        start: Message = {}
        chunks: list[bytes] = []

        async def replay_body() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def captured(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replay_body, captured)
        except BaseException:
            await _forget(redis, record_key)
            raise
        status = int(start.get("status", 500))
        if status >= 500 or status in (401, 403):
            await _forget(redis, record_key)
            return
        kept = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in start.get("headers", [])
                if k.lower() in KEPT_HEADERS]
        answer = {"fp": fingerprint, "state": "done", "status": status, "headers": kept,
                  "body": base64.b64encode(b"".join(chunks)).decode()}
        try:
            await redis.set(record_key, json.dumps(answer), ex=TTL_S)
        except REDIS_DOWN:  # the effect happened and was answered; a retry will run it again
            pass


async def _claim(redis: Any, record_key: str, fingerprint: str) -> ProblemResponse | None:
    """None when this request may go on: it claimed the key, or the key holds its answer to replay."""
    claimed = await redis.set(record_key, json.dumps({"fp": fingerprint, "state": "running"}), nx=True,
                              ex=RUNNING_TTL_S)
    if claimed:
        return None
    raw = await redis.get(record_key)
    stored = json.loads(raw) if raw else None
    if stored is not None and stored["fp"] != fingerprint:
        return problem(422, "idempotency-key-reused", f"this {HEADER} was used for another request (method, "
                                                      "path, query or body differ): use a new key")
    if stored is not None and stored["state"] == "running":
        return problem(409, "idempotency-in-progress", f"the first request with this {HEADER} is still "
                                                       "running: retry in a moment")
    return None


async def _replayed(redis: Any, record_key: str, fingerprint: str, send: Send) -> bool:
    """Send the stored answer of `record_key`, if it holds one for this request."""
    raw = await redis.get(record_key)
    stored = json.loads(raw) if raw else None
    if stored is None or stored["state"] != "done" or stored["fp"] != fingerprint:
        return False
    body = base64.b64decode(stored["body"])
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in stored["headers"]]
    headers += [(b"content-length", str(len(body)).encode()), (REPLAYED.lower().encode(), b"true")]
    await send({"type": "http.response.start", "status": stored["status"], "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return True


async def _forget(redis: Any, record_key: str) -> None:
    try:
        await redis.delete(record_key)
    except REDIS_DOWN:  # the running mark expires by itself
        pass


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)
