"""Webhook URLs that are refused (issue 12, acceptance 8): not http(s), or this api itself, by its
configured address, its public URL, the request's address, or a name that resolves to a loopback,
unspecified or own address on one of the api's ports; names resolved with the machine's real
resolver. The rule itself (`callcenter_api.webhook_urls`) and then through the api in-process."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from api_client import running
from problems import problem

from callcenter.db.engine import upgrade
from callcenter.settings import ApiSettings
from callcenter_api.webhook_urls import ApiAddress, url_refusal
from callcenter_dev.servers import RedisServer

API = ApiAddress("127.0.0.1", 8080, "http://api/v1/webhooks", "https://cc.example.test")
ITSELF = "the URL points at this api itself"


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://127.0.0.1:8080/x", "only http and https URLs are delivered to"),
    ("javascript:alert(1)", "only http and https URLs are delivered to"),
    ("http:///nohost", "the URL has no host"),
    ("http://127.0.0.1:99999/", "not a URL: Port out of range 0-65535"),
    ("http://127.0.0.1:8080/v1/flows", ITSELF),
    ("http://LOCALHOST:8080/", ITSELF),
    ("http://api/v1/keys", ITSELF),                       # the request's own host and port
    ("https://cc.example.test/hooks", ITSELF),           # the public URL (port 443), not resolved
    ("https://CC.Example.Test:443/", ITSELF),
    ("http://127.9.9.9:8080/", f"{ITSELF} (127.9.9.9 port 8080)"),
    ("http://0.0.0.0:8080/", f"{ITSELF} (0.0.0.0 port 8080)"),
    ("http://[::]:8080/", f"{ITSELF} (:: port 8080)"),
    ("http://[::1]:8080/", f"{ITSELF} (::1 port 8080)"),
    ("http://[::ffff:127.0.0.1]:8080/", f"{ITSELF} (127.0.0.1 port 8080)"),
    # every port the api answers on counts with every address of its own: its public URL's too
    ("https://127.0.0.1/hook", ITSELF),
    ("http://no-such-host.invalid:8080/", "the host name 'no-such-host.invalid' does not resolve"),
])
async def test_refused(url: str, why: str) -> None:
    refusal = await url_refusal(url, API)
    assert refusal is not None and refusal.startswith(why), refusal


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9000/hook",          # a receiver on this machine, another port
    "https://127.0.0.1:8443/hook",
    "http://cc.example.test:8443/hook",    # the public host, another port
    "http://no-such-host.invalid:9000/",   # another port: not resolved at all
    "https://192.0.2.10:8080/hook",        # another machine on the api's port
])
async def test_accepted(url: str) -> None:
    assert await url_refusal(url, API) is None


async def test_a_name_resolving_to_this_machine_is_the_api_on_its_port() -> None:
    """This machine's host name, resolved for real: loopback here (refused whatever the api's
    host) or one of its addresses (refused when the api listens on every interface)."""
    name = socket.gethostname()
    try:
        addresses = {ipaddress.ip_address(i[4][0]) for i in socket.getaddrinfo(name, 8080, type=socket.SOCK_STREAM)}
    except OSError:
        pytest.skip(f"this machine's host name {name!r} does not resolve here")
    url = f"http://{name}:8080/hook"
    on_loopback = ApiAddress("127.0.0.1", 8080)
    everywhere = ApiAddress("0.0.0.0", 8080)
    refusal = await url_refusal(url, everywhere)
    assert refusal is not None and refusal.startswith(ITSELF), refusal
    if all(a.is_loopback for a in addresses):
        assert (await url_refusal(url, on_loopback) or "").startswith(ITSELF)
    else:
        assert await url_refusal(url, on_loopback) is None
    assert await url_refusal(f"http://{name}:8081/hook", everywhere) is None


@pytest.fixture
async def api(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    db_url = f"sqlite:///{tmp_path / 'cc.sqlite3'}"
    upgrade(db_url)
    settings = ApiSettings(redis_url=redis_server.url, tenant="whurl", database_url=db_url, api_port=8080,
                           api_public_url="https://cc.example.test")
    async with running(settings) as (client, _):
        yield client


async def test_the_api_refuses_with_the_reason_and_keeps_nothing(api: httpx.AsyncClient) -> None:
    for url, why in (("https://cc.example.test/in", ITSELF), ("gopher://x.example/", "only http and https"),
                     ("http://[::1]:8080/", ITSELF)):
        body = problem(await api.post("/v1/webhooks", json={"url": url, "event_types": ["call.ended"]}),
                       422, "webhook-url-refused")
        assert body["detail"].startswith(why) and url in body["detail"], body
    r = await api.post("/v1/webhooks", json={"url": "http://127.0.0.1:9000/ok", "event_types": ["call.ended"]})
    assert r.status_code == 201, r.text
    assert [s["url"] for s in (await api.get("/v1/webhooks")).json()] == ["http://127.0.0.1:9000/ok"]
