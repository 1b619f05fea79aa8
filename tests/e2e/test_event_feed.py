"""The live event feed (GET /v1/events, Server-Sent Events) and the tech-support example, against
the whole system: real SSE clients (httpx streaming), SIPp calls, every service a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_harness import started_system

from callcenter.contract.codec import decode
from callcenter_dev.scenarios import scenario
from callcenter_dev.sipp import Sipp, wait_until
from callcenter_dev.system import WholeSystem

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    # a heartbeat every 2 s (15 s by default): a feed whose client has gone learns it at its next
    # write, and the api's SIGTERM waits for every open feed, so the teardown took 12-15 s
    yield from started_system(tmp_path_factory, "feed",
                              common_env={"CC_WRAPUP_S": "0", "CC_API_SSE_HEARTBEAT_S": "2"})


@dataclass
class Listener:
    """An SSE client in a thread: every event it receives, until `stop_after` says so or it is closed."""

    system: WholeSystem
    key: str
    last_id: str | None = None
    stop_after: Any = None  # a predicate on an event: stop once it holds
    events: list[dict[str, Any]] = field(default_factory=list)
    connected: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    response: httpx.Response | None = None

    def start(self) -> Listener:
        threading.Thread(target=self._run, daemon=True).start()
        assert self.connected.wait(10), "the feed did not open"
        return self

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        try:
            with httpx.Client(base_url=self.system.api_url, timeout=httpx.Timeout(10, read=None)) as client, \
                    client.stream("GET", "/v1/events", headers=headers) as r:
                self.response = r
                event: dict[str, Any] = {}
                for line in r.iter_lines():
                    if line.startswith(":"):
                        self.connected.set()
                    elif line:
                        name, _, value = line.partition(": ")
                        event[name] = value
                    elif event:
                        event["data"] = json.loads(event["data"])
                        self.events.append(event)
                        if self.stop_after is not None and self.stop_after(event):
                            return
                        event = {}
        except httpx.HTTPError:
            pass  # closed under it (the forced disconnect)
        finally:
            self.connected.set()
            self.done.set()

    def close(self) -> None:
        if self.response is not None:
            self.response.close()
        self.done.wait(10)


def stream_ids(system: WholeSystem, after: str) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for eid, fields in system.redis.xrange(system.keys.events, min="(" + after):
        entry = decode(fields, eid)
        out.append((entry.id, entry.type, entry.data))
    return out


def head(system: WholeSystem) -> str:
    last = system.redis.xrevrange(system.keys.events, count=1)
    return last[0][0].decode() if last else "0-0"


def agent_key(system: WholeSystem, agent_id: str) -> str:
    r = system.api.post("/v1/keys", json={"name": agent_id, "role": "agent", "agent_id": agent_id})
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def ended(call_id: str | None = None) -> Any:
    return lambda e: e["event"] == "call.ended" and (call_id is None or e["data"]["call_id"] == call_id)


def test_a_calls_whole_life_arrives_in_order_and_each_role_sees_its_share(system: WholeSystem) -> None:
    queue = Sipp(scenario("media_queue.xml")).start()
    phone = Sipp(scenario("agent.xml")).start()
    system.provision("life", None, queue, {"3001": phone, "3002": "sip:3002@127.0.0.1:9"})
    system.login("3001")
    admin = Listener(system, system.admin_key, stop_after=ended()).start()
    own = Listener(system, agent_key(system, "3001"), stop_after=ended()).start()
    other = Listener(system, agent_key(system, "3002")).start()
    caller = Sipp(scenario("caller.xml"), remote=system.caller_target, service="life", extra=["-d", "500"]).start()
    assert caller.wait() == 0, caller.errors() + system.logs()
    assert admin.done.wait(15) and own.done.wait(15), system.logs()
    other.close()

    [call_id] = system.call_ids_of_flow("life")
    expected = [(eid, t) for eid, t, d in stream_ids(system, "0-0")
                if t.startswith("call.") and d["call_id"] == call_id]
    got = [(e["id"], e["event"]) for e in admin.events
           if e["event"].startswith("call.") and e["data"].get("call_id") == call_id]
    assert got == expected  # every event of the call, in stream order, with its stream id
    assert got[0][1] == "call.arrived" and got[-1][1] == "call.ended"
    assert {"call.offered", "call.connected"} <= {t for _, t in got}
    # the agent's own feed: its agent's events and its call's events from the offer on, nothing else
    mine = [(e["event"], e["data"]) for e in own.events]
    assert all(d.get("agent_id") == "3001" or d.get("call_id") == call_id for _, d in mine), mine
    assert [t for t, d in mine if d.get("call_id") == call_id and t.startswith("call.")][:1] == ["call.offered"]
    assert "call.ended" in [t for t, _ in mine]
    assert not any(e["data"].get("call_id") == call_id or e["data"].get("agent_id") == "3001" for e in other.events)
    # an agent key lists its own calls only and cannot read another agent's
    r = httpx.get(f"{system.api_url}/v1/agents/3001", headers={"Authorization": f"Bearer {agent_key(system, '3002')}"})
    assert r.status_code == 403 and r.json()["type"].endswith("other-agent")


def test_a_reconnect_in_the_middle_loses_nothing_and_repeats_nothing(system: WholeSystem) -> None:
    queue = Sipp(scenario("media_queue.xml")).start()
    phone = Sipp(scenario("agent.xml")).start()
    system.provision("resume", None, queue, {"3101": phone})
    start = head(system)
    # the first connection stops (closes its socket) in the middle of the call: at the offer
    first = Listener(system, system.admin_key, last_id=start,
                     stop_after=lambda e: e["event"] == "call.offered").start()
    system.login("3101")
    caller = Sipp(scenario("caller.xml"), remote=system.caller_target, service="resume", extra=["-d", "1500"]).start()
    assert first.done.wait(15), system.logs()
    resumed_from = first.events[-1]["id"]
    assert wait_until(lambda: any(t == "call.connected" for _, t, _ in stream_ids(system, resumed_from)), 10)
    # events went by while no one listened; the second connection resumes with Last-Event-ID
    second = Listener(system, system.admin_key, last_id=resumed_from, stop_after=ended()).start()
    assert caller.wait() == 0, caller.errors()
    assert second.done.wait(15), system.logs()
    got = [e["id"] for e in first.events + second.events]
    expected = [eid for eid, _, _ in stream_ids(system, start)]
    assert got == expected[: len(got)] and len(got) == len(set(got))
    assert second.events[-1]["event"] == "call.ended"


def test_the_feed_filters_by_type_and_refuses_a_bad_resume_id(system: WholeSystem) -> None:
    start = head(system)
    system.api.put("/v1/agents/3201", json={"uri": "sip:3201@127.0.0.1:9", "skills": ["x"]})
    system.login("3201")
    system.api.post("/v1/agents/3201/pause", json={"reason": "tea"})
    with httpx.Client(base_url=system.api_url, headers={"Authorization": f"Bearer {system.admin_key}"}) as c, \
            c.stream("GET", "/v1/events", params={"types": "agent.paused"},
                     headers={"Last-Event-ID": start}) as r:
        lines = (line for line in r.iter_lines() if line)
        event_lines = [next(lines) for _ in range(4)]  # the ": connected" comment, then one event
    assert event_lines[0].startswith(":") and event_lines[1].startswith("id: ")
    assert event_lines[2] == "event: agent.paused"
    assert json.loads(event_lines[3].removeprefix("data: "))["reason"] == "tea"
    bad = system.api.get("/v1/events", headers={"Last-Event-ID": "not-an-id"})
    assert bad.status_code == 422


def test_the_tech_support_example_runs_from_the_shell(system: WholeSystem) -> None:
    queue = Sipp(scenario("media_queue.xml")).start()
    phone = Sipp(scenario("agent.xml")).start()
    env = {**os.environ, "CC_API_URL": system.api_url, "CC_API_KEY": system.admin_key,
           "SIP_TARGET": system.caller_target, "QUEUE_URI": f"sip:queue@{queue.uri_host}",
           "AGENT_URI": f"sip:1008@{phone.uri_host}", "CALLCENTER": str(Path(sys.executable).parent / "callcenter"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    done = subprocess.run([str(ROOT / "examples" / "tech-support" / "run.sh")], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr + system.logs()
    assert "answered by 1008" in done.stdout, done.stdout
    assert system.agent_state("1008") in ("free", "wrap_up")
