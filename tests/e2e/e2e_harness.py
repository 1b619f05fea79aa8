"""What the call-path tests share: finding a SIPp scenario, starting SIPp peers, provisioning a
flow and its agents through the api, and reading a call's events off the stream.

Scenarios are looked up in tests/e2e/sipp (whole-system only), then tests/sipp (shared with the
SIP-level tests in tests/sip), then the dev package's (callcenter_dev).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from callcenter_dev.scenarios import scenario
from callcenter_dev.sipp import Sipp, wait_until
from callcenter_dev.system import WholeSystem, wait_for

SIPP_DIR = Path(__file__).resolve().parents[1] / "sipp"   # SIP-level scenarios shared with tests/sip
E2E_SIPP_DIR = Path(__file__).resolve().parent / "sipp"   # the ones only the whole-system tests use


def sip(name: str) -> Path:
    for d in (E2E_SIPP_DIR, SIPP_DIR):
        if (d / name).exists():
            return d / name
    return scenario(name)


def caller_on_queue_media(system: WholeSystem, peers: list[Sipp], flow: str, queue: Sipp,
                          timeout_s: int = 30) -> tuple[Sipp, str]:
    """A caller of `flow` (no agent) answered by the queue media `queue` and waiting for a BYE; its
    call id once the edge has checkpointed it on that media (what a restarted edge reads)."""
    system.provision(flow, None, queue, {})
    caller = Sipp(sip("caller_on_media_waits_for_bye.xml"), remote=system.caller_target, service=flow,
                  timeout_s=timeout_s).start()
    peers.append(caller)
    wait_for(lambda: len(system.call_ids_of_flow(flow)) == 1, 10, "the call arrived", system)
    [call_id] = system.call_ids_of_flow(flow)
    wait_for(lambda: system.redis.hget(system.keys.dialog(call_id), "phase") == b"media_answered", 10,
             "the caller on the queue media", system)
    return caller, call_id


def started_system(tmp_path_factory: pytest.TempPathFactory, tenant: str, **start: Any) -> Iterator[WholeSystem]:
    """The body of a module's `system` fixture (`yield from`): `WholeSystem.start(**start)` for
    `tenant` in a new directory named after it; stopped at the end."""
    system = WholeSystem.start(tmp_path_factory.mktemp(tenant), tenant=tenant, **start)
    try:
        yield system
    finally:
        system.stop()


def whole_system(tmp_path_factory: pytest.TempPathFactory, tenant: str, ring_timeout_s: int,
                 redis_topology: str | None = None) -> Iterator[WholeSystem]:
    """The body of a module's `system` fixture: every service up, wrap-up 1 s; stopped at the end.
    Redis: `redis_topology` (single, cluster, sentinel), else CC_TEST_REDIS's."""
    return started_system(tmp_path_factory, tenant, redis_topology=redis_topology,
                          common_env={"CC_RING_TIMEOUT_S": str(ring_timeout_s), "CC_WRAPUP_S": "1"})


def restartable_edge_system(tmp_path_factory: pytest.TempPathFactory, tenant: str, *, lapse_ms: int,
                            heartbeat_ms: int, **edge_env: str) -> Iterator[WholeSystem]:
    """The body of the `system` fixture of the tests that kill and restart the edge: the edge lapse
    `lapse_ms` (the dispatcher's and the id lease's), the edge's heartbeat every `heartbeat_ms`,
    wrap-up 1 s, `edge_env` (CC_* names) for the edge."""
    return started_system(tmp_path_factory, tenant,
                          common_env={"CC_EDGE_LAPSE_MS": str(lapse_ms), "CC_WRAPUP_S": "1"},
                          edge_env={"CC_HEARTBEAT_INTERVAL_MS": str(heartbeat_ms), **edge_env})


@contextmanager
def ring_before_media(system: WholeSystem, on: bool = True) -> Iterator[None]:
    """`ring_before_media` on meanwhile: a free agent rings at arrival with the caller's own offer
    (early offer) instead of after the queue media answered the caller; put back after."""
    assert system.api.patch("/v1/config", json={"ring_before_media": on}).status_code == 200
    try:
        yield
    finally:
        assert system.api.patch("/v1/config", json={"ring_before_media": False}).status_code == 200


def start(peers: list[Sipp], sipp: Sipp, trace_msg: bool = False) -> Sipp:
    """Start a SIPp peer that the `peers` fixture stops at the end of the test; `trace_msg` keeps every
    message it sent and received (read with `messages()`)."""
    if trace_msg:
        sipp.extra += ["-trace_msg", "-message_file", str(sipp.logdir / "messages.log")]
    peers.append(sipp.start())
    return sipp


def messages(sipp: Sipp) -> str:
    p = sipp.logdir / "messages.log"
    return p.read_text(errors="replace") if p.exists() else ""


def caller(system: WholeSystem, name: str, flow: str, pause_ms: int | None = None, **kw: Any) -> Sipp:
    extra = ["-d", str(pause_ms)] if pause_ms is not None else []
    return Sipp(sip(name), remote=system.caller_target, service=flow, extra=extra, **kw)


def flow(system: WholeSystem, flow_id: str, queue: Sipp | str, **fields: Any) -> None:
    body = {"skill": flow_id, "priority": 0,
            "queue_uri": queue if isinstance(queue, str) else f"sip:queue@{queue.uri_host}", **fields}
    r = system.api.put(f"/v1/flows/{flow_id}", json=body)
    assert r.status_code in (200, 201), r.text


def agent(system: WholeSystem, agent_id: str, skill: str, phone: Sipp | str, **fields: Any) -> None:
    uri = phone if isinstance(phone, str) else f"sip:{agent_id}@{phone.uri_host}"
    r = system.api.put(f"/v1/agents/{agent_id}", json={"uri": uri, "skills": [skill], **fields})
    assert r.status_code in (200, 201), r.text


def only_call(system: WholeSystem, flow_id: str) -> str:
    wait_for(lambda: len(system.call_ids_of_flow(flow_id)) == 1, 10, f"the call of {flow_id}", system)
    [call_id] = system.call_ids_of_flow(flow_id)
    return call_id


def queued_call(system: WholeSystem, peers: list[Sipp], name: str, flow_id: str, pause_ms: int,
                trace_msg: bool = False) -> tuple[Sipp, str]:
    """Start a SIPp caller of `flow_id` and wait for its call to be queued; the caller and the call id."""
    c = start(peers, caller(system, name, flow_id, pause_ms=pause_ms), trace_msg=trace_msg)
    call_id = only_call(system, flow_id)
    wait_for(lambda: has_event(system, call_id, "call.queued"), 10, "the call queued", system)
    return c, call_id


def nothing_pending_or_dead(system: WholeSystem) -> None:
    """Each report and event handled and acknowledged, nothing dead, no live call."""
    wait_until(lambda: system.redis.scard(system.keys.calls) == 0, 5)
    for stream, group in ((system.keys.reports, "dispatcher"), (system.keys.events, "cdr-writer")):
        # a consumer acknowledges a handled batch with its next read, the cdr-writer after its
        # linger (CC_READ_LINGER_MS): an entry may stay pending that long after its effect is durable
        wait_until(lambda: system.redis.xpending(stream, group)["pending"] == 0, 3)  # noqa: B023
        assert system.redis.xpending(stream, group)["pending"] == 0, (stream, group)
    assert system.redis.xlen(system.keys.dead) == 0
    assert system.redis.scard(system.keys.calls) == 0


def types(system: WholeSystem, call_id: str) -> list[str]:
    return [t for t, _ in system.events(call_id)]


def has_event(system: WholeSystem, call_id: str, kind: str, **match: Any) -> bool:
    return any(t == kind and all(d.get(k) == v for k, v in match.items()) for t, d in system.events(call_id))


def agent_failures(system: WholeSystem, call_id: str) -> list[tuple[str, str]]:
    return [(d["agent_id"], d["reason"]) for t, d in system.events(call_id) if t == "call.agent_failed"]


def ok(sipp: Sipp, system: WholeSystem, timeout: float | None = None) -> None:
    rc = sipp.wait(timeout)
    assert rc == 0, f"{sipp.scenario.name} exited {rc}\n{sipp.errors()}\n{system.logs()}"


def ended_by_the_restart(system: WholeSystem, call_id: str, lapse_ms: int) -> dict[str, Any]:
    """The call's CDR (within the edge lapse + 10 s), asserted to say the edge ended it because it
    restarted."""
    cdr = system.wait_for_cdr(call_id, timeout=lapse_ms / 1000 + 10)
    assert (cdr["ended_by"], cdr["reason"]) == ("edge", "edge_restarted"), cdr
    return cdr


def most_calls_an_agent_held(system: WholeSystem) -> int:
    """The most calls any agent held at one time, from the event stream in order."""
    held: dict[str, set[str]] = {}
    agent_of: dict[str, str] = {}
    most = 0
    for kind, data in system.events():
        if kind == "call.connected":
            agent_of[data["call_id"]] = data["agent_id"]
            held.setdefault(data["agent_id"], set()).add(data["call_id"])
            most = max(most, len(held[data["agent_id"]]))
        elif kind == "call.ended" and data["call_id"] in agent_of:
            held[agent_of[data["call_id"]]].discard(data["call_id"])
    return most
