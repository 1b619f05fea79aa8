"""An edge cut off from Redis alone by a silent network (a partition that drops packets, Redis fine
for everybody else), past the lapse, with a talking call: the dispatcher declares it lost and ends
the call (edge_lost). Once the network heals, the edge learns it within a bound (half the lapse,
when a beat unanswered for the lease's life is given up and sent again on a new connection, plus
0.2 s and a few round trips) and hangs up both sides of the ended call, which nobody else could.

Before, the beat sent into the silent network waited for the Redis client's socket timeout (5 s;
without it, for TCP to give up, minutes after the network healed): measured 5.2 s here, over the
bound; now 1.5 s (half the lapse) plus the retry.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from callcenter_dev.scenarios import scenario
from callcenter_dev.servers import free_port
from callcenter_dev.sipp import Sipp
from callcenter_dev.system import WholeSystem, redis_topology_under_test, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    redis_topology_under_test() != "single", reason="the edge reaches one redis-server through a link the "
    "test cuts; a cluster client learns every node's address from the cluster and would go around it")]

LAPSE_MS = 3000
HEARTBEAT_MS = 500


class SilentLink:
    """A TCP relay to Redis that can go silent: while cut, it forwards nothing and drops what it
    reads, either way (the bytes are lost, as a partition loses packets); new connections are
    accepted and get nothing through either."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.cut = False
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self.cut:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for s in self._sockets:
            s.close()


@pytest.fixture
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    system = WholeSystem.start(tmp_path_factory.mktemp("cut-off"), tenant="cutoff",
                               common_env={"CC_EDGE_LAPSE_MS": str(LAPSE_MS)},
                               edge_env={"CC_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_MS)})
    try:
        yield system
    finally:
        system.stop()


def test_an_edge_cut_off_by_a_silent_network_learns_it_was_lost_soon_after_it_heals(
        system: WholeSystem, peers: list[Sipp]) -> None:
    # the edge reaches Redis through the link only (restarted on it: same id and address)
    link = SilentLink(system.server.port)
    try:
        system.restart_edge_with(CC_REDIS_URL=f"redis://127.0.0.1:{link.port}/0")
        queue = Sipp(scenario("media_queue.xml"), timeout_s=90).start()
        phone = Sipp(scenario("agent.xml"), timeout_s=90).start()
        peers += [queue, phone]
        system.provision("cut", None, queue, {"7001": phone})
        system.login("7001")
        caller = Sipp(scenario("caller_waits_for_bye.xml"), remote=system.caller_target, service="cut",
                      timeout_s=90).start()
        peers.append(caller)
        wait_for(lambda: system.agent_state("7001") == "in_call", 15, "the agent in the call", system)
        [call_id] = system.call_ids_of_flow("cut")
        wait_for(lambda: system.redis.hget(system.keys.dialog(call_id), "legs") is not None, 5,
                 "the call checkpointed", system)

        link.cut = True
        cdr = system.wait_for_cdr(call_id, timeout=LAPSE_MS / 1000 + 10)
        assert (cdr["outcome"], cdr["ended_by"], cdr["reason"]) == ("failed", "system", "edge_lost"), cdr
        time.sleep(LAPSE_MS / 1000)   # the edge's beats hang in the silent network meanwhile
        assert caller.running() and phone.running()   # only the edge speaks SIP to them

        link.cut = False
        healed = time.monotonic()
        # the edge learns it (its next beat that gets through) and hangs up both sides
        assert caller.wait(30) == 0, caller.errors() + system.logs()
        assert phone.wait(10) == 0, phone.errors() + system.logs()
        learnt_s = time.monotonic() - healed
        print(f"the edge hung up {learnt_s:.1f} s after the network healed")
        assert learnt_s <= LAPSE_MS / 2000 + 3, learnt_s
        lines = [json.loads(line) for line in system.edge.log().splitlines()
                 if '"edge.declared_lost"' in line]
        assert lines and lines[-1]["unaware_ms"] >= LAPSE_MS, lines
        ended = [d for t, d in system.events(call_id) if t == "call.ended"]
        assert len(ended) == 1, ended   # the edge's late call_ended wrote no second record
    finally:
        link.close()
