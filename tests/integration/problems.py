"""The check of an api error body (RFC 9457 problem), shared by the tests/integration/test_api*.py."""

from __future__ import annotations

from typing import Any

import httpx

PROBLEMS = "urn:callcenter:problem:"


def problem(r: httpx.Response, status: int, cause: str) -> dict[str, Any]:
    """The problem body of an error response, after checking its media type, `type` and `status`."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json", r.headers
    body: dict[str, Any] = r.json()
    assert body["type"] == PROBLEMS + cause and body["status"] == status, body
    assert isinstance(body["title"], str) and body["title"], body
    return body
