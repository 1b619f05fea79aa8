"""CDRs under a burst of SIPp calls with the cdr-writer SIGKILLed in the middle (issue 12, acceptance 3).

One agent declines every call it is offered (603), three answer; a burst of callers goes through.
The cdr-writer is killed with SIGKILL while calls are ending and started again a while later: in
the end the `cdrs` table holds exactly one row per attempt that did not connect and one final row
per call, as the event stream tells them, nothing lost and nothing twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from callcenter.db.engine import make_engine
from callcenter.db.models import Cdr
from callcenter_dev.processes import ServiceProcess
from callcenter_dev.scenarios import scenario
from callcenter_dev.sipp import Sipp
from callcenter_dev.system import WholeSystem, wait_for

pytestmark = pytest.mark.slow

CALLS = 15
FLOW = "kill-cdr"
ANSWERING = ["k-1", "k-2", "k-3"]
DECLINER = "k-no"
SIPP_DIR = Path(__file__).parent / "sipp"


@pytest.fixture
def system(tmp_path: Path) -> Iterator[WholeSystem]:
    system = WholeSystem.start(tmp_path, tenant="cdrkill")
    try:
        yield system
    finally:
        system.stop()


def expected_rows(system: WholeSystem) -> list[tuple[str, int]]:
    """(call, attempt) of every CDR the event stream announces: final rows and attempt rows."""
    keys = []
    for kind, data in system.events():
        if kind == "call.ended":
            keys.append((data["call_id"], 0))
        elif kind == "call.agent_failed":
            keys.append((data["call_id"], data["attempt"]))
    return sorted(keys)


def stored_rows(db_url: str) -> list[tuple[str, int]]:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return sorted((c, a) for c, a in conn.execute(select(Cdr.call_id, Cdr.attempt)))
    finally:
        engine.dispose()


def ended_calls(system: WholeSystem) -> int:
    return sum(1 for kind, _ in system.events() if kind == "call.ended")


def test_writer_killed_mid_burst_loses_no_row_and_writes_none_twice(system: WholeSystem, peers: list[Sipp]) -> None:
    queue = Sipp(scenario("media_queue.xml"), calls=CALLS, timeout_s=90).start()
    phones: dict[str, Sipp | str] = {a: Sipp(scenario("agent.xml"), calls=CALLS, timeout_s=90).start()
                                     for a in ANSWERING}
    decliner = Sipp(SIPP_DIR / "agent_declines_uas.xml", calls=CALLS, timeout_s=90).start()
    peers += [queue, decliner, *(p for p in phones.values() if isinstance(p, Sipp))]
    system.provision(FLOW, None, queue, {**phones, DECLINER: decliner})
    system.login(DECLINER, *ANSWERING)
    caller = Sipp(scenario("caller.xml"), remote=system.caller_target, service=FLOW, calls=CALLS, rate=10,
                  extra=["-d", "300"], timeout_s=90).start()
    peers.append(caller)

    writer = system.services["cdr-writer"]
    wait_for(lambda: ended_calls(system) >= 3, 30, "the first calls ended", system)
    writer.kill()  # SIGKILL: whatever it had read and not acknowledged stays pending
    killed_at = ended_calls(system)
    wait_for(lambda: ended_calls(system) >= killed_at + 3, 30, "more calls ended with the writer down", system)
    system.services["cdr-writer"] = ServiceProcess("cdr-writer", writer.env, health_url=writer.health_url,
                                                   logfile=writer.logfile).start()

    assert caller.wait() == 0, caller.errors() + system.logs()
    db_url = writer.env["CC_DATABASE_URL"]
    expected = expected_rows(system)
    assert sum(1 for _, attempt in expected if attempt == 0) == CALLS
    assert any(attempt > 0 for _, attempt in expected), "the decliner was never offered a call"
    wait_for(lambda: stored_rows(db_url) == expected, 20, "every CDR row written", system)
    rows = stored_rows(db_url)
    assert rows == expected
    assert max(Counter(rows).values()) == 1
