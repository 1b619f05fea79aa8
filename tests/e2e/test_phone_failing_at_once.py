"""An agent whose phone declines every ring at once, with a wrap-up of 0, on the whole system with
real SIPp peers: the waiting caller's offers to it come about once per `refused_offer_hold_ms`
(1 s), not as fast as the phone answers (before, hundreds of rings, missed offers and attempt rows a
second), and the agent ends free, not stuck."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_harness import started_system

from callcenter_dev.scenarios import scenario
from callcenter_dev.sipp import Sipp
from callcenter_dev.system import WholeSystem, wait_for

pytestmark = pytest.mark.slow

FLOW = "declined"
AGENT = "dnd-1"
SIPP_DIR = Path(__file__).parent / "sipp"
SHARED_SIPP_DIR = Path(__file__).resolve().parents[1] / "sipp"
WAIT_MS = 4000  # the caller's time on the queue media before it hangs up


@pytest.fixture
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    yield from started_system(tmp_path_factory, "dnd")


def test_a_phone_that_declines_at_once_is_rung_about_once_a_second(system: WholeSystem, peers: list[Sipp]) -> None:
    queue = Sipp(scenario("media_queue.xml"), calls=1, timeout_s=60).start()
    phone = Sipp(SIPP_DIR / "agent_declines_uas.xml", calls=100_000, timeout_s=60).start()
    peers += [queue, phone]
    system.provision(FLOW, None, queue, {AGENT: phone})
    r = system.api.put(f"/v1/agents/{AGENT}", json={"uri": f"sip:{AGENT}@{phone.uri_host}", "skills": [FLOW],
                                                     "wrapup_s": 0})
    assert r.status_code in (200, 201), r.text
    system.login(AGENT)
    # answered by the queue media, never by an agent: hangs up after WAIT_MS
    caller = Sipp(SHARED_SIPP_DIR / "caller_answered_bye.xml", remote=system.caller_target, service=FLOW, calls=1,
                  extra=["-d", str(WAIT_MS)], timeout_s=60).start()
    peers.append(caller)
    assert caller.wait() == 0, caller.errors() + system.logs()

    def ended() -> bool:
        return any(kind == "call.ended" for kind, _ in system.events())

    wait_for(ended, 20, "the call's end", system)
    failed = [d for kind, d in system.events() if kind == "call.agent_failed"]
    assert all(d["agent_id"] == AGENT and d["reason"] == "rejected" for d in failed), failed
    # one ring at the start and one per second after: 4-6 over the caller's 4 s (hundreds before)
    assert 2 <= len(failed) <= WAIT_MS // 1000 + 2, len(failed)

    def agent_free() -> bool:
        r = system.api.get(f"/v1/agents/{AGENT}")
        return r.status_code == 200 and r.json()["state"] == "free"

    wait_for(agent_free, 5, "the agent free after its last hold", system)
