"""Every key a Lua step touches is in its tenant's slot (issue 13, acceptance 1).

Redis Cluster routes a script by its declared keys (each step declares the tenant's events stream,
KEYS[1]) and Redis 7 does not refuse a legacy script that touches an undeclared key of another
slot on the same node: so this is checked here. MONITOR on the session's redis-server records the
commands the scripts run ("lua" clients) while a tenant goes through the life of agents and calls
(flows, agents, log-in, pause, calls offered, answered, refused, ended, wrap-up timers, edge
heartbeat and loss, reconciler, statistics reset, deletes); every command's key (its first
argument) and every argument that names a callcenter key must carry the tenant's hash tag.
"""

from __future__ import annotations

import re
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

from lua_harness import EDGE, Harness

from callcenter.store import RC
from callcenter_dev.servers import RedisServer

LINE = re.compile(r"^\d+\.\d+ \[\d+ lua\] (.*)$")
ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')
KEYLESS = {"time", "ping", "echo"}   # a step's commands without a key (none expected)


class Monitor:
    """MONITOR on a raw connection, in a thread, until `stop()`: the commands run by scripts."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379))
        self.sock.sendall(b"MONITOR\r\n")
        self.commands: list[list[str]] = []
        self.ended = threading.Event()   # our ECHO after the last step: every step's commands are in
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            *lines, buf = buf.split(b"\r\n")
            for raw in lines:
                if b'"monitor-end"' in raw:
                    self.ended.set()
                m = LINE.match(raw.decode(errors="replace").lstrip("+"))
                if m:
                    self.commands.append(ARG.findall(m.group(1)))

    def stop(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


async def _life_of_a_tenant(h: Harness) -> None:
    st = h.store
    await h.flow("support", skill="sales", welcome_uri="")
    await h.agent("a1", ["sales"], wrapup_s=1)
    await h.agent("a2", ["sales"], chat_capacity=2)
    assert (await st.agent_pause("a2", "lunch", now=h.now)).rc is RC.OK
    assert (await st.agent_unpause("a2", now=h.now)).rc is RC.OK
    assert (await st.edge_beat(EDGE, "tok", 5000, "grp", now=h.now)).rc is RC.OK
    # a call offered to an agent who answers, talks and is hung up on; wrap-up ends by its timer
    await h.arrive("c1")
    c1 = await st.call("c1")
    assert c1 is not None and c1.get("offer"), c1
    await h.report("report.agent_answered", "c1", offer_id=c1["offer"], agent_id=c1["agent"])
    await h.report("report.call_ended", "c1", by="caller", reason="bye")
    # a call refused by its agent, then queued, then the caller leaves
    await h.arrive("c2")
    c2 = await st.call("c2")
    if c2 and c2.get("offer"):
        await h.report("report.agent_failed", "c2", offer_id=c2["offer"], agent_id=c2["agent"], code=486)
    await h.report("report.call_ended", "c2", by="caller", reason="bye")
    h.now += 120_000
    await st.fire_timers(now=h.now)
    await h.arrive("c3")
    h.now += 60_000
    await st.reconcile(now=h.now, edge_lapse_ms=1000)
    await st.edge_lost(EDGE, 1000, now=h.now)
    await st.stats_reset(now=h.now)
    await st.agent_logout("a1", now=h.now)
    await st.agent_release("a2", now=h.now)
    await st.agent_delete("a1", now=h.now)
    await st.flow_delete("support", now=h.now)
    await st.edge_release(EDGE, "tok", now=h.now)


async def test_every_key_a_step_touches_is_in_the_tenant_slot(h: Harness, redis_server: RedisServer) -> None:
    monitor = Monitor(redis_server.url)
    try:
        await _life_of_a_tenant(h)
        await h.redis.echo("monitor-end")
        assert monitor.ended.wait(10), "MONITOR did not see the end"
    finally:
        monitor.stop()
    prefix = "cc:{t}:"
    assert len(monitor.commands) > 100, f"too few commands seen ({len(monitor.commands)})"
    wrong: list[Any] = []
    for args in monitor.commands:
        name = args[0].lower()
        if name in KEYLESS:
            wrong.append(args[:3])
            continue
        if len(args) < 2 or not args[1].startswith(prefix):
            wrong.append(args[:3])
        wrong += [args[:3] for a in args[2:] if a.startswith("cc:") and not a.startswith(prefix)]
    assert not wrong, f"commands outside the tenant's slot: {wrong[:10]}"
    seen = {args[0].lower() for args in monitor.commands}
    assert {"hset", "zadd", "xadd", "sadd"} <= seen, seen
