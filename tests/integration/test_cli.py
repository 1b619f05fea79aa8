"""`callcenter`, the command line, run as a subprocess against the api as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as syncredis
from api_client import ApiProcess, api_process

from callcenter.contract.codec import encode
from callcenter.store.keys import Keys
from callcenter_dev.servers import RedisServer

CLI = str(Path(sys.executable).parent / "callcenter")


@pytest.fixture(scope="module")
def api(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    with api_process(redis_server, tmp_path_factory.mktemp("cli"), {"CC_TENANT": "cli"}) as running:
        yield running


def cc(api: ApiProcess, *args: str, key: str | None = None, env: dict[str, str] | None = None,
       ok: bool = True) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "CC_API_URL": api.url, "CC_API_KEY": key or api.admin, **(env or {})}
    done = subprocess.run([CLI, *args], env=full, capture_output=True, text=True, timeout=60, check=False)
    if ok:
        assert done.returncode == 0, f"callcenter {' '.join(args)}: {done.stdout}{done.stderr}"
    return done


def js(api: ApiProcess, *args: str, **kw: Any) -> Any:
    return json.loads(cc(api, "--json", *args, **kw).stdout)


def test_provision_and_operate_agents_and_flows(api: ApiProcess) -> None:
    created = js(api, "flow", "create", "tech_support", "--skill", "support", "--queue-uri", "sip:q@127.0.0.1:5090",
                 "--priority", "2")
    assert created["id"] == "tech_support" and created["priority"] == 2
    assert js(api, "flow", "update", "tech_support", "--set", "sl_threshold_s=30")["sl_threshold_s"] == 30
    assert js(api, "flow", "show", "tech_support")["skill"] == "support"
    table = cc(api, "flow", "list").stdout
    assert table.splitlines()[0].split()[:2] == ["ID", "SKILL"] and "tech_support" in table
    js(api, "agent", "create", "1008", "--uri", "sip:1008@127.0.0.1:5070", "--skill", "support")
    assert js(api, "agent", "login", "1008")["state"] == "free"
    assert js(api, "agent", "pause", "1008", "--reason", "lunch")["state"] == "paused"
    # the agent of a command without an id comes from CC_AGENT_ID
    assert js(api, "agent", "unpause", env={"CC_AGENT_ID": "1008"})["state"] == "free"
    assert js(api, "agent", "release", "1008")["already"] is True
    assert [a["state"] for a in js(api, "agent", "list") if a["id"] == "1008"] == ["free"]
    assert "1008" in cc(api, "agent", "list").stdout
    assert js(api, "agent", "logout", "1008")["state"] == "logged_out"
    assert [q["flow_id"] for q in js(api, "queue", "show", "tech_support")] == ["tech_support"]
    assert js(api, "calls") == []
    assert "calls" in js(api, "stats") or js(api, "stats")
    assert js(api, "cdr", "list", "--since", "2020-01-01", "--flow", "tech_support", "--agent", "1008") == []
    assert js(api, "flow", "delete", "tech_support") == {"deleted": "tech_support"}
    missing = cc(api, "flow", "show", "tech_support", ok=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_keys_and_refusals(api: ApiProcess, tmp_path: Path) -> None:
    made = js(api, "key", "create", "--name", "desk", "--role", "agent", "--agent-id", "1009")
    assert made["key"].startswith("cck_")
    assert made["id"] in cc(api, "key", "list").stdout
    denied = cc(api, "flow", "list", key=made["key"], ok=False)
    assert denied.returncode == 1 and "403" in denied.stderr and "role" in denied.stderr
    assert js(api, "key", "revoke", made["id"])["revoked_at"] is not None
    # no key in the environment: the config file's is used
    config = tmp_path / "callcenter" / "config.toml"
    config.parent.mkdir()
    config.write_text(f'url = "{api.url}"\nkey = "{api.admin}"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("CC_API_KEY", "CC_API_URL")}
    done = subprocess.run([CLI, "--json", "key", "list"], env={**env, "XDG_CONFIG_HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    no_key = subprocess.run([CLI, "calls"], env={**env, "CC_API_URL": api.url, "XDG_CONFIG_HOME": str(tmp_path / "x")},
                            capture_output=True, text=True, timeout=60, check=False)
    assert no_key.returncode == 1 and "401" in no_key.stderr and "CC_API_KEY" in no_key.stderr


def test_dead_letters_list_and_replay(api: ApiProcess) -> None:
    keys = Keys(api.env["CC_TENANT"])
    client = syncredis.Redis.from_url(api.env["CC_REDIS_URL"])
    try:
        fields = encode("agent.logged_in", {"ts": 1, "agent_id": "dl-1"})
        client.xadd(keys.dead, {"stream": keys.events, "group": "cdr-writer", "entry_id": "5-0", "error": "boom",
                                **{f"orig_{k}": v for k, v in fields.items()}})
        listed = js(api, "dead-letters", "list")
        assert [(d["type"], d["error"]) for d in listed] == [("agent.logged_in", "boom")]
        before = client.xlen(keys.events)
        replayed = js(api, "dead-letters", "replay", listed[0]["id"])
        assert replayed["stream"] == keys.events and client.xlen(keys.events) == before + 1
        assert client.xlen(keys.dead) == 0
        entry = client.xrange(keys.events, min=replayed["new_entry_id"], max=replayed["new_entry_id"])[0][1]
        assert entry == {k.encode(): (v if isinstance(v, bytes) else str(v).encode()) for k, v in fields.items()}
        assert js(api, "dead-letters", "list") == []
    finally:
        client.close()


def test_events_tail_prints_events_from_the_feed(api: ApiProcess) -> None:
    """From a known id (--since-id, the feed's Last-Event-ID), so the test need not race the tail."""
    keys = Keys(api.env["CC_TENANT"])
    client = syncredis.Redis.from_url(api.env["CC_REDIS_URL"])
    try:
        last = client.xrevrange(keys.events, count=1)
        since = last[0][0].decode() if last else "0-0"
    finally:
        client.close()
    js(api, "agent", "create", "2001", "--uri", "sip:2001@127.0.0.1:5070", "--skill", "x")
    cc(api, "agent", "login", "2001")
    cc(api, "agent", "pause", "2001", "--reason", "tea")
    lines = cc(api, "--json", "events", "tail", "--type", "agent.logged_in", "--type", "agent.paused",
               "--since-id", since, "--count", "2").stdout.splitlines()
    got = [json.loads(line) for line in lines]
    assert [(e["type"], e["data"]["agent_id"]) for e in got] == [("agent.logged_in", "2001"), ("agent.paused", "2001")]
    assert got[1]["data"]["reason"] == "tea" and got[0]["id"] < got[1]["id"]
    table = cc(api, "events", "tail", "--type", "agent.paused", "--since-id", since, "--count", "1").stdout
    assert "agent.paused" in table and '"tea"' in table
