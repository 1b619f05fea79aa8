"""Many replicas at once, all real (issue 13, acceptance 2): 2 sip-edges (each its own SIP port and
edge id), 3 dispatchers, 2 cdr-writers, 2 api processes, 2 celery workers and beat, one redis-server
and one SQL file. SIPp callers spread over both edges (one caller per edge, as an SBC or SRV records
spread them) at 14 calls/s for 24 s, 40 agents; the agents' phones are reachable from both edges.
While the load runs, one process of each kind is SIGKILLed in turn, 4 s apart (callcenter_dev.
replica_faults.STEPS): a dispatcher (left dead: the other two claim its pending reports), a
cdr-writer (restarted), an api (restarted), a celery worker (left dead), a sip-edge (restarted on
its port and id, as a supervisor does), beat (restarted).

One more caller, of a flow without agents, waits on the queue media through the edge that will be
killed: a call that edge holds and cannot carry on (it is not talking). It must end with a true
CDR (ended by the edge, reason edge_restarted) and a BYE to the caller.

Measured from outside by the fault suite's rig (callcenter_dev.faults.Rig.measure) and asserted:
no failed call but those the killed edge held (CDR reason edge_restarted/edge_lost, that edge's id),
a CDR for every call and none wrong (talk time, who hung up), attempt rows consistent, no SIP call
taken twice, every agent free, no live call, no pending entry (dispatcher, cdr-writer, webhooks
groups) and no dead entry once the system had time to be quiet (the lapse is 3 s). Both apis
serve (provisioning through one, logins through the other, both read after the faults); the
celery jobs deliver a webhook for every call that ended.

bench/replicas.py runs the same at a larger load.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from e2e_harness import sip

from callcenter_dev.faults import FLOW, Load
from callcenter_dev.replica_faults import STEPS, ReplicaRig, in_turn
from callcenter_dev.replicas import Counts
from callcenter_dev.sipp import Sipp, wait_until

pytestmark = pytest.mark.slow

LOAD = Load(rate=14, duration_s=24, talk_ms=1000, fault_at=0.15, settle_s=40, call_timeout_s=15)
GAP_S = 3.0


class Receiver:
    """A webhook receiver on loopback: the delivery ids of what it took (it answers 204)."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        got = self.ids

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                got.add(self.headers.get("X-Callcenter-Delivery", ""))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.server.shutdown()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaRig]:
    rig = ReplicaRig.start_many(tmp_path_factory.mktemp("replicas"), Counts(), agents=40, lapse_ms=3000,
                                heartbeat_ms=500)
    try:
        yield rig
    finally:
        rig.stop()


def test_one_of_each_kind_killed_in_turn_under_load_loses_only_the_killed_edges_calls(
        rig: ReplicaRig, receiver: Receiver) -> None:
    replicas = rig.replicas
    assert replicas is not None
    r = replicas.apis[0].post("/v1/webhooks", json={"url": f"http://127.0.0.1:{receiver.port}/ended",
                                         "event_types": ["call.ended"]})
    assert r.status_code == 201, r.text

    # a call the killed edge holds and cannot carry on: on the queue media of a flow without agents
    queue = rig.peers[0]
    rig.system.provision("held", None, queue, {})
    held = Sipp(sip("caller_on_media_waits_for_bye.xml"), remote=replicas.targets[1], service="held",
                timeout_s=120).start()
    try:
        _test_the_run(rig, receiver, held)
    finally:
        held.stop()


def _test_the_run(rig: ReplicaRig, receiver: Receiver, held: Sipp) -> None:
    replicas = rig.replicas
    assert replicas is not None
    first, last = replicas.apis[0], replicas.apis[-1]
    assert wait_until(lambda: len(rig.system.call_ids_of_flow("held")) == 1, 10), replicas.logs()
    [held_id] = rig.system.call_ids_of_flow("held")
    assert wait_until(lambda: rig.system.redis.hget(rig.system.keys.dialog(held_id), "phase") == b"media_answered",
                      10), replicas.logs()

    def pump_registered() -> bool:
        groups: Any = rig.system.redis.xinfo_groups(rig.system.keys.events)
        return any(g["name"] == b"webhooks" for g in groups)
    assert wait_until(pump_registered, 30), replicas.logs()

    fault = in_turn(STEPS, gap_s=GAP_S)
    result = rig.run(fault, LOAD)
    detail = "\n".join([fault.doc, result.HEADER, result.row(), *result.examples])
    assert result.calls == LOAD.calls, detail
    assert set(result.replaced) >= {s.process for s in STEPS}, detail
    assert not result.lost, detail + "\n" + replicas.logs()
    # the only calls the fault ended are the killed edge's
    killed_edge = replicas.edge_id("sip-edge-2")
    assert set(result.explained_edges) <= {killed_edge}, detail
    # the held call ended by the restarted edge: a BYE to the caller, a true CDR
    assert held.wait() == 0, held.errors()
    cdr = first.get("/v1/cdrs", params={"call_id": held_id}).json()["items"]
    assert [(c["attempt"], c["outcome"], c["ended_by"], c["reason"], c["edge"]) for c in cdr] == [
        (0, "failed", "edge", "edge_restarted", killed_edge)], cdr

    # both edges carried calls: final rows by edge
    with sqlite3.connect(f"file:{rig.workdir / 'cc.sqlite3'}?mode=ro", uri=True, timeout=30) as conn:
        per_edge = dict(conn.execute("SELECT edge, count(*) FROM cdrs WHERE attempt = 0 AND flow_id = ? "
                                     "GROUP BY edge", (FLOW,)).fetchall())
    assert set(per_edge) == {replicas.edge_id(e) for e in replicas.edges}, per_edge
    assert sum(per_edge.values()) == result.cdrs, (per_edge, detail)

    # both apis serve and agree: every agent free
    for api in (first, last):
        states = {a: api.get(f"/v1/agents/{a}").json()["state"] for a in rig.agents}
        assert set(states.values()) == {"free"}, states

    # the celery jobs (one worker and beat left, beat restarted) delivered a webhook for every call
    # (the load's and the held one)
    def all_delivered() -> bool:
        return len(receiver.ids) >= result.cdrs + 1
    wait_until(all_delivered, 60, interval=0.5)
    deliveries = first.get("/v1/webhooks/deliveries", params={"limit": 1000}).json()
    statuses: dict[str, int] = {}
    for d in deliveries:
        statuses[d["status"]] = statuses.get(d["status"], 0) + 1
    assert len(receiver.ids) == result.cdrs + 1, (len(receiver.ids), result.cdrs, statuses)
    print(f"\n{fault.doc}\n{result.HEADER}\n{result.row()}\nfinal CDRs by edge {per_edge}, "
          f"attempt rows {result.attempt_rows}, explained by edge {result.explained_edges}, "
          f"webhooks delivered {len(receiver.ids)}; {time.strftime('%H:%M:%S')}")
