"""examples/analytics/consumer.py beside a SIPp load on the whole system: its own consumer group on
the event stream, and its per-flow figures (offered, answered, abandoned, within T, service level,
abandon rate) equal the api's GET /v1/service-level (issue 12, acceptance 5).

Two flows: one whose six callers share two agents (some wait past T = 1 s, so the service level is
neither 0 nor 100 by design, though the exact figure depends on timing and need not be known: both
sides must agree), and one whose three callers give up during a welcome that never answers."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from e2e_harness import caller, flow, ok, sip, start, whole_system

from callcenter_dev.scenarios import scenario
from callcenter_dev.sipp import Sipp
from callcenter_dev.system import WholeSystem, wait_for

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "analytics"
sys.path.insert(0, str(EXAMPLE))
import consumer as analytics  # noqa: E402

TENANT = "analytics"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    yield from whole_system(tmp_path_factory, TENANT, 5)


@pytest.fixture
def consumer(system: WholeSystem, tmp_path: Path) -> Iterator[None]:
    """The example as its own process, attached before the first call."""
    log = (tmp_path / "analytics.log").open("wb")
    proc = subprocess.Popen([sys.executable, str(EXAMPLE / "consumer.py"), "--redis-url", system.server.url,
                             "--tenant", TENANT, "--threshold-s", "1", "--consumer", "a1"],
                            stdout=log, stderr=subprocess.STDOUT)

    def attached() -> bool:
        try:
            return any(g["name"] == analytics.GROUP.encode() for g in system.redis.xinfo_groups(system.keys.events))
        except redis.ResponseError:
            return False
    try:
        wait_for(attached, 15, "the analytics group attached", system)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def caught_up(system: WholeSystem) -> bool:
    group = next(g for g in system.redis.xinfo_groups(system.keys.events) if g["name"] == analytics.GROUP.encode())
    return not group["pending"] and group["lag"] == 0


def api_figures(system: WholeSystem, flow_id: str) -> dict[str, Any]:
    (level,) = system.api.get("/v1/service-level", params={"flow_id": flow_id}).json()
    hour = next(w for w in level["windows"] if w["minutes"] == 60)
    out = {k: hour[k] for k in analytics.COUNTS} | {"service_level_pct": hour["service_level_pct"]}
    out["abandon_rate"] = hour["abandoned"] / hour["offered"] if hour["offered"] else None
    return out


def test_the_example_consumer_agrees_with_the_api(system: WholeSystem, peers: list[Sipp], consumer: None) -> None:
    queue = start(peers, Sipp(scenario("media_queue.xml"), calls=9, timeout_s=90))
    phones = {a: start(peers, Sipp(scenario("agent.xml"), calls=6, timeout_s=90)) for a in ("an-1", "an-2")}
    system.provision("an-talk", None, queue, dict(phones))
    flow(system, "an-talk", queue, sl_threshold_s=1)
    system.login(*phones)
    welcome = start(peers, Sipp(sip("agent_noanswer_uas.xml"), calls=3, timeout_s=90))
    flow(system, "an-leave", queue, welcome_uri=f"sip:welcome@{welcome.uri_host}", sl_threshold_s=1)
    r = system.api.put("/v1/agents/an-3", json={"uri": f"sip:an-3@{phones['an-1'].uri_host}", "skills": ["an-leave"]})
    assert r.status_code in (200, 201), r.text
    system.login("an-3")  # logged in, so callers are not refused for want of agents; never rung

    talkers = start(peers, caller(system, "caller.xml", "an-talk", pause_ms=800, calls=6, rate=10, timeout_s=90))
    leavers = start(peers, caller(system, "caller_cancel.xml", "an-leave", calls=3, rate=10, timeout_s=90))
    ok(talkers, system)
    ok(leavers, system)
    wait_for(lambda: system.redis.scard(system.keys.calls) == 0, 20, "every call ended", system)
    wait_for(lambda: caught_up(system), 20, "the consumer caught up", system)

    mine = analytics.figures(system.redis, TENANT)
    for flow_id in ("an-talk", "an-leave"):
        assert mine[flow_id] == api_figures(system, flow_id), flow_id
    assert (mine["an-talk"]["offered"], mine["an-talk"]["answered"]) == (6, 6)
    assert (mine["an-leave"]["offered"], mine["an-leave"]["abandoned"], mine["an-leave"]["abandon_rate"]) == (3, 3, 1.0)
