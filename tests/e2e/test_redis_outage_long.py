"""Redis away for 60 s under a SIPp load (issue 9, acceptance 3), at CI scale: the fault suite's
`redis-restart-60s` (redis-server stopped with its AOF, started again 60 s later) on a whole system
with 6 agents, 3 calls/s for 4 s, callers arriving during the outage included (they wait for it).

Beyond the suite's measurement (every call completed, a CDR for each and none wrong, no SIP call
taken twice, every agent free, no live call, nothing pending or dead): no live edge was declared
lost, no agent ever had two calls at once, and the edge's reports were delivered across the outage
in order (each call's reports in the stream carry seq 1, 2, 3, ... with no gap and no repeat).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from e2e_harness import most_calls_an_agent_held

from callcenter.contract.codec import decode
from callcenter_dev.faults import FAULTS, Load, Rig
from callcenter_dev.system import redis_topology_under_test

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    redis_topology_under_test() != "single", reason="stops and restarts one redis-server process; a cluster's "
    "or sentinel's fail-over is tested in test_redis_cluster.py and test_redis_sentinel.py")]

LOAD = Load(rate=3, duration_s=4, talk_ms=1000, settle_s=30, call_timeout_s=15)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    rig = Rig.start(tmp_path_factory.mktemp("outage60"), agents=6, lapse_ms=2000, heartbeat_ms=400, drain_s=10)
    try:
        yield rig
    finally:
        rig.stop()


def report_seqs(rig: Rig) -> dict[str, list[int]]:
    """Each call's report seqs in the order of the reports stream."""
    out: dict[str, list[int]] = {}
    for eid, fields in rig.system.redis.xrange(rig.system.keys.reports):
        e = decode(fields, eid)
        if int(e.data.get("seq") or 0) > 0:
            out.setdefault(str(e.data["call_id"]), []).append(int(e.data["seq"]))
    return out


def test_redis_away_60s_under_load_loses_nothing(rig: Rig) -> None:
    started = time.monotonic()
    result = rig.run(FAULTS["redis-restart-60s"], LOAD)
    assert result.calls == LOAD.calls, result.row()
    assert "redis-server" in result.replaced, result.row()
    assert not result.lost, "\n".join([result.row(), *result.examples])
    assert result.ok == LOAD.calls, result.row()
    assert "edge.lost" not in rig.system.services["dispatcher"].log()
    assert rig.system.redis.zscore(rig.system.keys.edges, rig.system.edge_id) is not None
    assert most_calls_an_agent_held(rig.system) == 1
    seqs = report_seqs(rig)
    assert len(seqs) == LOAD.calls, seqs
    for call_id, got in seqs.items():
        assert got == list(range(1, len(got) + 1)), (call_id, got)
    print(result.row(), f"({time.monotonic() - started:.0f} s)")
