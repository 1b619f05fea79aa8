"""The whole system as real processes on loopback: a private redis-server, the api, dispatcher,
cdr-writer (SQLite) and sip-edge on free ports. Used by the whole-system tests (tests/e2e) and the
end-to-end benchmark (bench/edge_calls.py); SIPp plays the callers, media servers and phones.

    system = WholeSystem.start(workdir, tenant="e2e", common_env={"CC_WRAPUP_S": "0"})
    system.provision("support", welcome, queue, {"1001": phone})
    ...
    system.stop()

The sip-edge can be killed (`kill_edge`), stopped with SIGTERM (`stop_edge`) and started again
(`restart_edge`) on the same UDP port and edge id. For the fault suite (callcenter_dev.faults) any
service can be SIGKILLed and restarted (`kill_service`, `restart_service`), replaced by a rolling
update (`rolling_update`), run twice (`add_service`), and redis-server stopped and started again
(`stop_redis`, `start_redis`).

Redis is one private redis-server unless the environment says `CC_TEST_REDIS=cluster` (a Redis
Cluster of 3 masters and 3 replicas, `callcenter_dev.redis_topologies`) or `CC_TEST_REDIS=sentinel`
(a master, a replica and 3 sentinels): every service then gets the `redis+cluster://` or
`redis+sentinel://` URL, and `system.redis` is a client of that topology. A test may also pass a
running `redis_server` (several systems, one tenant each, on one cluster); it is not stopped with
the system then.
"""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from callcenter.contract.codec import decode
from callcenter.redis import connect_sync
from callcenter.store.keys import Keys
from callcenter_dev.edge_restart import EXIT_START_REFUSED, restart_on_its_port, start_holding_its_port
from callcenter_dev.processes import ServiceProcess, create_api_key
from callcenter_dev.redis_topologies import RedisClusterServers, RedisSentinelServers
from callcenter_dev.servers import RedisServer, free_port, stop_process, udp_port_bound
from callcenter_dev.sipp import Sipp, wait_until

TOPOLOGIES = ("single", "cluster", "sentinel")


def redis_topology_under_test() -> str:
    """The Redis topology of the whole-system tests: `CC_TEST_REDIS` (single, cluster, sentinel)."""
    topology = os.environ.get("CC_TEST_REDIS", "single") or "single"
    if topology not in TOPOLOGIES:
        raise ValueError(f"CC_TEST_REDIS={topology!r}: one of {', '.join(TOPOLOGIES)}")
    return topology


def start_redis_topology(topology: str | None = None, appendonly: bool = False) -> Any:
    """A running Redis of `topology` (default: `redis_topology_under_test()`): something with `url`, `client()`
    and `stop()`."""
    topology = topology or redis_topology_under_test()
    if topology == "cluster":
        return RedisClusterServers().start()
    if topology == "sentinel":
        return RedisSentinelServers().start()
    return RedisServer(appendonly=appendonly).start()


# how long a restarted service may take to answer its health check
RESTART_READY_S = 60.0


@dataclass
class WholeSystem:
    """Every service as a process against one private redis-server, with helpers to provision and read."""

    tenant: str
    server: Any   # RedisServer, RedisClusterServers or RedisSentinelServers
    redis: redis.Redis
    api: httpx.Client
    sip_port: int
    edge_id: str
    services: dict[str, ServiceProcess]
    edge_env: dict[str, str] = field(default_factory=dict)
    # the admin API key `self.api` sends (made with `callcenter-api create-key` before the api starts)
    admin_key: str = ""
    api_env: dict[str, str] = field(default_factory=dict)
    owns_server: bool = True

    @classmethod
    def start(cls, workdir: Path, *, tenant: str = "e2e", edge_id: str = "edge-e2e",
              common_env: dict[str, str] | None = None, edge_env: dict[str, str] | None = None,
              dispatcher_env: dict[str, str] | None = None, redis_appendonly: bool = False,
              redis_server: Any = None, redis_topology: str | None = None,
              redis_unix_socket: bool | None = None) -> WholeSystem:
        """`redis_unix_socket`: the services reach a single redis-server by its Unix socket (the
        harness's own client keeps its port); by default when the environment says
        `CC_TEST_REDIS_SOCKET=unix` and it started a single server itself (any suite can run so)."""
        owns_server = redis_server is None
        server = start_redis_topology(redis_topology, redis_appendonly) if owns_server else redis_server
        if redis_unix_socket is None:
            redis_unix_socket = (owns_server and isinstance(server, RedisServer)
                                 and os.environ.get("CC_TEST_REDIS_SOCKET", "tcp") == "unix")
        db = f"sqlite:///{workdir / 'cc.sqlite3'}"
        api_port, sip_port = free_port(), free_port(socket.SOCK_DGRAM)
        health = [free_port() for _ in range(3)]
        redis_url = server.unix_url if redis_unix_socket else server.url
        common = {"CC_REDIS_URL": redis_url, "CC_TENANT": tenant, "CC_WRAPUP_S": "1", "CC_RING_TIMEOUT_S": "5",
                  "CC_REJECT_ON_NO_AGENTS": "false", **(common_env or {})}
        edge = {**common, "CC_SIP_PORT": str(sip_port), "CC_EDGE_ID": edge_id, "CC_HEALTH_PORT": str(health[2]),
                "CC_DRAIN_TIMEOUT_S": "2", **(edge_env or {})}
        api_env = {**common, "CC_DATABASE_URL": db, "CC_API_PORT": str(api_port)}
        services = {
            "api": ServiceProcess("api", api_env, health_url=f"http://127.0.0.1:{api_port}/healthz"),
            "dispatcher": ServiceProcess("dispatcher", {**common, "CC_HEALTH_PORT": str(health[0]),
                                                        "CC_CLAIM_IDLE_MS": "2000", **(dispatcher_env or {})},
                                         health_url=f"http://127.0.0.1:{health[0]}/healthz"),
            "cdr-writer": ServiceProcess("cdr-writer", {**common, "CC_DATABASE_URL": db,
                                                        "CC_HEALTH_PORT": str(health[1]), "CC_BLOCK_MS": "100"},
                                         health_url=f"http://127.0.0.1:{health[1]}/healthz"),
            "sip-edge": ServiceProcess("sip-edge", edge, health_url=f"http://127.0.0.1:{health[2]}/healthz"),
        }
        system = cls(tenant=tenant, server=server, redis=connect_sync(server.url), owns_server=owns_server,
                     api=httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10),
                     sip_port=sip_port, edge_id=edge_id, services={}, edge_env=edge, api_env=api_env)
        # The services start side by side (as in a deployment, none waits for another). The SQL
        # database is migrated and the admin key made (`callcenter-api create-key`) meanwhile the
        # dispatcher and the sip-edge, which never touch SQL, start; then the api and the
        # cdr-writer (each migrates too: not two at once on one SQLite file). The sip-edge's start
        # waits for it (it retries on a new port if its own was taken); the others' health checks
        # are waited for at the end.
        key_maker = ThreadPoolExecutor(max_workers=1)
        try:
            key = key_maker.submit(create_api_key, api_env, name="e2e")
            system.services["dispatcher"] = services["dispatcher"].launch()
            system.services["sip-edge"] = system._start_edge()
            system.admin_key = key.result()
            system.api.headers["Authorization"] = f"Bearer {system.admin_key}"
            for name in ("api", "cdr-writer"):
                system.services[name] = services[name].launch()
            system.services = {name: system.services[name] for name in services}   # the usual order
            # generous: on a loaded 2-core machine four services importing at once took over 20 s
            for svc in system.services.values():
                svc.ready(timeout=60)
        except BaseException:
            system.stop()
            raise
        finally:
            key_maker.shutdown(wait=True)
        return system

    def _start_edge(self, attempts: int = 3) -> ServiceProcess:
        """Start the sip-edge and wait until it serves SIP. The edge refuses a UDP port another
        process holds (exit 75): a free port picked a moment before can be taken meanwhile on a busy
        machine (another test's SIPp), so then it starts again on a new port."""
        for attempt in range(attempts):
            health = self.edge_env["CC_HEALTH_PORT"]
            edge = ServiceProcess("sip-edge", self.edge_env, health_url=f"http://127.0.0.1:{health}/healthz")
            try:
                edge.start()
            except RuntimeError:   # exited before its health check answered: maybe the port race
                if edge.proc is None or edge.proc.returncode != 75 or attempt == attempts - 1:
                    raise
            started = time.monotonic()
            while time.monotonic() < started + 15:
                if edge.proc is not None and edge.proc.poll() is not None:
                    break
                # `edge.started` is logged at info; at a quieter log level: alive with its port bound
                if "edge.started" in edge.log() or (time.monotonic() > started + 2 and udp_port_bound(self.sip_port)):
                    return edge
                time.sleep(0.05)
            code = edge.stop()
            if code != 75 or attempt == attempts - 1:
                raise RuntimeError(f"sip-edge did not start (exit {code}):\n{edge.log()}")
            self.sip_port = free_port(socket.SOCK_DGRAM)
            self.edge_env["CC_SIP_PORT"] = str(self.sip_port)
            self.edge_env["CC_HEALTH_PORT"] = str(free_port())
        raise AssertionError("unreachable")

    @property
    def api_url(self) -> str:
        return str(self.api.base_url).rstrip("/")

    def stop(self) -> None:
        self.api.close()
        # SIGTERM to every service first, so they drain and exit side by side, then wait for each
        for svc in reversed(list(self.services.values())):
            if svc.proc is not None and svc.proc.poll() is None:
                svc.proc.terminate()
        for svc in reversed(list(self.services.values())):
            svc.stop()
        self.redis.close()
        if self.owns_server:
            self.server.stop()

    # -- the sip-edge process ----------------------------------------------------------------
    @property
    def edge(self) -> ServiceProcess:
        return self.services["sip-edge"]

    def kill_edge(self) -> None:
        """SIGKILL: no drain, no BYE, no last report, the heartbeat simply stops."""
        self.edge.kill()

    def restart_edge(self) -> ServiceProcess:
        """Start the sip-edge again on its port and id and wait until it holds the port; started
        again if another process held the port meanwhile (callcenter_dev.edge_restart)."""
        old = self.edge
        old.stop()
        self.services["sip-edge"] = restart_on_its_port(
            ServiceProcess("sip-edge", self.edge_env, health_url=old.health_url, logfile=old.logfile))
        return self.edge

    def restart_edge_with(self, **env: str) -> ServiceProcess:
        """Stop the sip-edge and start it again with `env` changed, same id; on a new port if its
        own is taken meanwhile (as at start): for a test that changes how the edge is set up."""
        self.edge.stop()
        self.edge_env.update(env)
        self.services["sip-edge"] = self._start_edge()
        return self.edge

    # -- faults: any service, redis-server ----------------------------------------------------
    def kill_service(self, name: str) -> None:
        """SIGKILL one service (a key of `services`): no clean-up, no last acknowledgement."""
        self.services[name].kill()

    def restart_service(self, name: str) -> ServiceProcess:
        """Start a service again with its environment, health port and log file (the sip-edge on its
        port and id, as a container restart does)."""
        if name == "sip-edge":
            return self.restart_edge()
        old = self.services[name]
        if old.name == "sip-edge":   # another edge (its own port and id)
            self.services[name] = restart_on_its_port(old)
            return self.services[name]
        old.stop()
        # the time to be ready is not what a fault test measures: on a machine loaded 8 times over its
        # cores a restarted service's imports alone took over 20 s (test_replicas, cdr-writer)
        self.services[name] = ServiceProcess(old.name, old.env, health_url=old.health_url,
                                             logfile=old.logfile).start(timeout=RESTART_READY_S)
        return self.services[name]

    def _second(self, name: str, suffix: str) -> ServiceProcess:
        """Another process of the service `name` with its own health port and consumer name (two
        pods never share either); the api on its own port, the sip-edge on its own port and id."""
        old = self.services[name]
        health = free_port()
        env = {**old.env, "CC_HEALTH_PORT": str(health), "CC_CONSUMER": f"{old.name}-{suffix}"}
        url = f"http://127.0.0.1:{health}/healthz"
        if old.name == "api":
            env.pop("CC_HEALTH_PORT")
            env["CC_API_PORT"] = str(health)
        if old.name == "sip-edge":
            env.pop("CC_CONSUMER")
            env["CC_EDGE_ID"] = f"{self.edge_id}-{suffix}"
            for stream_port in ("CC_SIP_TCP_PORT", "CC_SIP_TLS_PORT", "CC_SIP_WS_PORT", "CC_SIP_WSS_PORT"):
                if env.get(stream_port, "0") not in ("", "0"):   # each edge listens on its own
                    env[stream_port] = str(free_port())
            # its port picked a moment before may be taken meanwhile (exit 75): then another one
            for _ in range(3):
                env["CC_SIP_PORT"] = str(free_port(socket.SOCK_DGRAM))
                edge = ServiceProcess(old.name, env, health_url=url)
                code = start_holding_its_port(edge, time.monotonic() + 30)
                if code is None:
                    return edge
                if code != EXIT_START_REFUSED:
                    break
            raise RuntimeError(f"sip-edge-{suffix} did not start (exit {code}):\n{edge.log()}")
        return ServiceProcess(old.name, env, health_url=url).start()

    def add_service(self, name: str, key: str, suffix: str = "b") -> ServiceProcess:
        """A second process of `name` running beside the first, kept as `services[key]`."""
        self.services[key] = self._second(name, suffix)
        return self.services[key]

    def rolling_update(self, name: str, suffix: str) -> ServiceProcess:
        """Replace a service as the docs say: start the new process (the sip-edge on a new address
        with its own id, services/sip-edge/README.md), then SIGTERM the old one, which is returned
        (wait for its exit with `.stop(timeout)`: an edge drains its calls first). The new one takes
        the old one's place in `services`; after an api or sip-edge update `api` and
        `caller_target` point at the new process."""
        new = self._second(name, suffix)
        old = self.services[name]
        if new.name == "sip-edge":
            self.edge_env, self.edge_id = new.env, new.env["CC_EDGE_ID"]
            self.sip_port = int(new.env["CC_SIP_PORT"])
        if new.name == "api":
            self.api.close()
            self.api = httpx.Client(base_url=f"http://127.0.0.1:{new.env['CC_API_PORT']}", timeout=10,
                                    headers={"Authorization": f"Bearer {self.admin_key}"})
        self.services[name] = new
        if old.proc is not None and old.proc.poll() is None:
            old.proc.terminate()
        return old

    def stop_redis(self) -> None:
        """Stop redis-server with SIGTERM: it writes its AOF out (appendonly) and exits."""
        stop_process(self.server.proc, timeout=30)

    def start_redis(self) -> None:
        """Start redis-server again on the same port and directory: it loads what it wrote."""
        self.server.start()

    # -- reading state -----------------------------------------------------------------------
    @property
    def keys(self) -> Keys:
        return Keys(self.tenant)

    @property
    def caller_target(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    def events(self, call_id: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Every event, or the call.* events of one call."""
        out = []
        entries: Any = self.redis.xrange(self.keys.events)
        for eid, fields in entries:
            e = decode(fields, eid)
            if call_id is None or (e.type.startswith("call.") and e.data.get("call_id") == call_id):
                out.append((e.type, e.data))
        return out

    def call_ids_of_flow(self, flow: str) -> list[str]:
        return [d["call_id"] for t, d in self.events() if t == "call.arrived" and d["flow"] == flow]

    def agent_state(self, agent_id: str) -> str:
        return str(self.api.get(f"/v1/agents/{agent_id}").json()["state"])

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}\n{s.log()}" for s in self.services.values())

    def wait_for_cdr(self, call_id: str, timeout: float = 10) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def has_cdr() -> bool:
            # the call's final row (its attempt rows, if any, have the same call id)
            rows = self.api.get("/v1/cdrs", params={"limit": 100, "kind": "final"}).json()["items"]
            for row in rows:
                if row["call_id"] == call_id:
                    found.update(row)
                    return True
            return False
        assert wait_until(has_cdr, timeout), f"no CDR for {call_id}\n{self.logs()}"
        return found

    # -- provisioning ------------------------------------------------------------------------
    def provision(self, flow: str, welcome: Sipp | str | None, queue: Sipp | str,
                  agents: dict[str, Sipp | str]) -> None:
        """A flow (welcome and queue media: a SIPp UAS or a URI) and agents (a SIPp phone or a URI)."""
        def uri(peer: Sipp | str, user: str) -> str:
            return peer if isinstance(peer, str) else f"sip:{user}@{peer.uri_host}"

        body: dict[str, Any] = {"skill": flow, "priority": 0, "queue_uri": uri(queue, "queue")}
        if welcome is not None:
            body["welcome_uri"] = uri(welcome, "welcome")
        r = self.api.put(f"/v1/flows/{flow}", json=body)
        assert r.status_code in (200, 201), r.text
        for agent_id, phone in agents.items():
            r = self.api.put(f"/v1/agents/{agent_id}", json={"uri": uri(phone, agent_id), "skills": [flow]})
            assert r.status_code in (200, 201), r.text

    def login(self, *agent_ids: str) -> None:
        for agent_id in agent_ids:
            r = self.api.post(f"/v1/agents/{agent_id}/login")
            assert r.status_code == 200, r.text


def wait_for(predicate: Any, timeout: float, what: str, system: WholeSystem | None = None) -> None:
    """wait_until that fails with the services' logs."""
    if not wait_until(predicate, timeout):
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{system.logs() if system else ''}")
