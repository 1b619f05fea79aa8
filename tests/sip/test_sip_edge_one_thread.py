"""Issue 15: the sip-edge runs sippy on the asyncio loop's thread (`sippy/reactor.py`).

- while a call runs, no thread but the loop's runs sippy: there is no SIP or watcher thread, sippy's
  reactor is bound to the loop's thread (sippy itself complains of a timer started elsewhere), and
  the facts reach the dispatcher on that thread;
- a sippy timer fires with the loop otherwise idle, from the one loop handle armed for the earliest
  timer (moved earlier for an earlier timer, left alone for a later one);
- a burst of datagrams does not hold the loop: another reader ready with it (the loop's Redis
  connection) runs after at most one batch of datagrams (UDP_DRAIN_BATCH), not after the burst,
  and the reactor says the socket is being read in pieces (the facts wait: test_sip_edge_facts_held).
"""

from __future__ import annotations

import asyncio
import socket
import threading

from sip_harness import EdgeUnderTest, SippLauncher, agent_at_once, expect_success, support_caller

from callcenter.metrics import SIP
from callcenter_sip_edge.sippy import reactor as loop_reactor
from callcenter_sip_edge.sippy.transport import UDP_DRAIN_BATCH


async def test_a_call_runs_on_the_loops_thread_alone(edge: EdgeUnderTest, sipp: SippLauncher,
                                                    logs: list[dict[str, object]]) -> None:
    from sippy.Core.EventDispatcher import ED2

    loop_thread = threading.get_ident()
    seen: dict[str, object] = {}

    def on_answer(_fact: object) -> None:   # while the call is up
        seen["fact_thread"] = threading.get_ident()
        seen["threads"] = sorted(t.name for t in threading.enumerate())

    edge.dispatcher.on("agent_answered", on_answer)
    agent = agent_at_once(edge, sipp, "agent_early_uas")
    caller = support_caller(sipp, edge, "caller_answered_bye")
    await expect_success(caller, agent)
    await edge.dispatcher.wait_for("call_ended")

    assert seen["fact_thread"] == loop_thread
    assert ED2.my_ident == loop_thread and loop_reactor.current().ident == loop_thread
    assert not [name for name in seen["threads"] if str(name).startswith("sip")], seen["threads"]  # type: ignore[attr-defined]
    # sippy prints this (captured into the log) for a timer started on another thread than its reactor's
    assert not [r for r in logs if "wrong thread" in str(r.get("text", ""))]


async def test_a_timer_fires_with_the_loop_idle_from_the_one_handle(edge: EdgeUnderTest) -> None:
    from sippy.Time.Timeout import Timeout

    reactor = loop_reactor.current()
    fired = asyncio.Event()
    timers: dict[str, object] = {}
    # started inside a turn, as every sippy timer is (a datagram, a command, a timer)
    reactor.turn(lambda: timers.update(late=Timeout(fired.set, 0.4)))
    late_at = timers["late"].etime.monot   # type: ignore[attr-defined]
    assert reactor._armed_at == late_at   # the handle is armed for the heap's head, nothing coarser
    reactor.turn(lambda: timers.update(later=Timeout(lambda: None, 5.0)))
    assert reactor._armed_at == late_at   # a later timer leaves the handle alone
    reactor.turn(lambda: timers.update(early=Timeout(fired.set, 0.15)))
    early_at = timers["early"].etime.monot   # type: ignore[attr-defined]
    assert reactor._armed_at == early_at < late_at   # an earlier one moves it earlier
    await asyncio.wait_for(fired.wait(), 5.0)   # nothing else happens on the loop meanwhile
    assert asyncio.get_running_loop().time() >= early_at
    fired.clear()
    await asyncio.wait_for(fired.wait(), 5.0)   # and the handle is armed again for the next one
    assert asyncio.get_running_loop().time() >= late_at
    timers["later"].cancel()   # type: ignore[attr-defined]


async def test_a_datagram_burst_lets_a_ready_redis_read_in_after_one_batch(edge: EdgeUnderTest) -> None:
    loop = asyncio.get_running_loop()
    burst = 3 * UDP_DRAIN_BATCH
    before = SIP.requests[("in", b"OPTIONS")]
    handled_when_read: list[int] = []
    backlogged_when_read: list[bool] = []
    redis_side, peer_side = socket.socketpair()   # stands in for the loop's Redis connection
    redis_side.setblocking(False)

    def redis_read() -> None:
        redis_side.recv(64)
        handled_when_read.append(SIP.requests[("in", b"OPTIONS")] - before)
        backlogged_when_read.append(loop_reactor.current().backlogged)
        loop.remove_reader(redis_side.fileno())

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer, redis_side, peer_side:
        peer.bind(("127.0.0.1", 0))
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for n in range(burst):   # all in the edge's socket before the loop looks again
            peer.sendto(_options(edge.port, peer.getsockname()[1], n), ("127.0.0.1", edge.port))
        peer_side.send(b"+OK\r\n")   # the reply is in at the same time
        loop.add_reader(redis_side.fileno(), redis_read)
        for _ in range(400):
            if handled_when_read and SIP.requests[("in", b"OPTIONS")] - before >= 2 * UDP_DRAIN_BATCH:
                break
            await asyncio.sleep(0.01)
    handled = SIP.requests[("in", b"OPTIONS")] - before
    assert handled >= 2 * UDP_DRAIN_BATCH, handled   # the burst was more than one batch
    assert handled_when_read and handled_when_read[0] <= UDP_DRAIN_BATCH, (handled_when_read, handled)
    # the batch before the read left datagrams waiting: the stack's facts wait for the burst's rest
    assert backlogged_when_read == [True]


def _options(port: int, from_port: int, n: int) -> bytes:
    return (f"OPTIONS sip:edge@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{from_port};branch=z9hG4bK-burst-{n}\r\n"
            f"From: <sip:probe@127.0.0.1:{from_port}>;tag=p{n}\r\nTo: <sip:edge@127.0.0.1:{port}>\r\n"
            f"Call-ID: burst-{n}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode()
