"""Redis Cluster and Redis Sentinel from the Debian `redis-server`, on free loopback ports.

    cluster = RedisClusterServers().start()    # 3 masters + 3 replicas, cluster_state:ok
    cluster.url                                 # redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...
    cluster.master_of_tenant("a")               # the node that owns the slot of cc:{a}:...
    cluster.failover_tenant("a")                # CLUSTER FAILOVER on that master's replica
    cluster.stop()

    group = RedisSentinelServers().start()      # a master, a replica and 3 sentinels
    group.url                                   # redis+sentinel://127.0.0.1:s1,.../cc
    group.failover()                            # SENTINEL FAILOVER cc; waits for the new master

Both hand out the same things as `servers.RedisServer`: `url` for `CC_REDIS_URL`, `client()` for a
synchronous client that a test reads with, `stop()`. The cluster runs with
`cluster-require-full-coverage no`, as operators should: a shard without a master stops only its
own slots, so the tenants of the other shards carry on while its replica takes over.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from callcenter.redis import connect_sync
from callcenter.store.keys import Keys
from callcenter_dev.servers import free_port, remove_dir, stop_process


def _exe(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise RuntimeError(f"{name} is not installed (apt-get install redis-server)")
    return exe


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class _Node:
    """One redis-server process (a cluster node, a master, a replica or a sentinel) in its own dir."""

    port: int
    workdir: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> _Node:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     cwd=self.workdir)
        _wait(self.ping, 10, f"redis on port {self.port}")
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def ping(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis on port {self.port} exited ({self.proc.returncode})")
        with self.client() as c:
            return bool(c.ping())

    def kill(self) -> None:
        """SIGKILL: what it had not replicated yet is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        stop_process(self.proc)


def _server_args(port: int, workdir: Path, *extra: str) -> list[str]:
    return [_exe("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
            "--save", "", "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no",
            "--loglevel", "warning", "--logfile", str(workdir / "redis.log"),
            # a replica's full sync starts at once: the default (5 s, to batch replicas arriving
            # together) held every cluster and sentinel start-up that long before its replicas counted
            "--repl-diskless-sync-delay", "0", *extra]


def online_replicas(client: redis.Redis) -> int:
    """The replicas of a master that finished their first sync (a replica still waiting for it is
    connected, but acknowledges nothing: a WAIT or a failover then would find it behind)."""
    info: Any = client.info("replication")
    return sum(1 for key, value in info.items()
               if key.startswith("slave") and isinstance(value, dict) and value.get("state") == "online")


@dataclass
class RedisClusterServers:
    """A Redis Cluster of `masters` masters with one replica each, on loopback."""

    masters: int = 3
    node_timeout_ms: int = 2000
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cc-rcluster-")))
    nodes: list[_Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, timeout: float = 60.0) -> RedisClusterServers:
        try:
            for i in range(self.masters * 2):
                port = free_port()
                d = self.workdir / str(port)
                d.mkdir()
                # the cluster bus on a port of its own (the default, port + 10000, may be taken)
                args = _server_args(port, d, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                    "--cluster-port", str(free_port()),
                                    "--cluster-node-timeout", str(self.node_timeout_ms),
                                    "--cluster-require-full-coverage", "no",
                                    "--cluster-allow-reads-when-down", "no",
                                    # a node lists a replica in CLUSTER SLOTS once its replication
                                    # offset is not 0, and an idle master moves it only by its ping
                                    # to the replicas (default every 10 s): 1 s here, so a new
                                    # cluster is ready in about 3 s instead of 11
                                    "--repl-ping-replica-period", "1")
                del i
                self.nodes.append(_Node(port, d, args).start())
            create = [_exe("redis-cli"), "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                      "--cluster-replicas", "1", "--cluster-yes"]
            done = subprocess.run(create, capture_output=True, timeout=timeout, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout.decode()}{done.stderr.decode()}")
            _wait(self._ready, timeout, "cluster_state:ok on every node, a replica for every master")
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        for n in self.nodes:
            with n.client() as c:
                if c.cluster("info").get("cluster_state") != "ok":
                    return False
        shards = self._shards()
        if len(shards) != self.masters or not all(len(s["replicas"]) == 1 for s in shards):
            return False
        for s in shards:
            with self.node(s["port"]).client() as c:
                if online_replicas(c) != 1:
                    return False
        return True

    def _shards(self) -> list[dict[str, Any]]:
        """Per master: its port, its slot ranges and the ports of its replicas, from CLUSTER SLOTS
        as the first live node sees it."""
        for n in self.nodes:
            if n.proc is None or n.proc.poll() is not None:
                continue
            with n.client() as c:
                raw: Any = c.execute_command("CLUSTER SLOTS")
            by_port: dict[int, dict[str, Any]] = {}
            for start, end, master, *replicas in raw:
                s = by_port.setdefault(int(master[1]), {"port": int(master[1]), "slots": [], "replicas": []})
                s["slots"].append((int(start), int(end)))
                s["replicas"] = [int(r[1]) for r in replicas]
            return list(by_port.values())
        raise RuntimeError("no cluster node is running")

    def node(self, port: int) -> _Node:
        return next(n for n in self.nodes if n.port == port)

    def master_port_of_slot(self, slot: int) -> int:
        for s in self._shards():
            if any(lo <= slot <= hi for lo, hi in s["slots"]):
                return int(s["port"])
        raise LookupError(f"slot {slot} is not served")

    def master_of_tenant(self, tenant: str) -> int:
        """The port of the master that serves the tenant's slot (all its keys: one hash tag)."""
        return self.master_port_of_slot(tenant_slot(tenant))

    def replica_of(self, master_port: int) -> int:
        [replica] = next(s["replicas"] for s in self._shards() if s["port"] == master_port)
        return int(replica)

    def failover_tenant(self, tenant: str, timeout: float = 30.0) -> tuple[int, int]:
        """`CLUSTER FAILOVER` on the replica of the tenant's master: the master stops taking writes,
        the replica catches up with it, then takes its slots over (nothing lost). Returns (old
        master port, new master port) once every node sees the new master."""
        old = self.master_of_tenant(tenant)
        new = self.replica_of(old)
        with self.node(new).client() as c:
            c.execute_command("CLUSTER FAILOVER")
        _wait(lambda: self.master_of_tenant(tenant) == new and self._all_agree() and self._ready(), timeout,
              f"the replica on {new} serving tenant {tenant}, the old master its replica")
        return old, new

    def kill_master_of_tenant(self, tenant: str, timeout: float = 30.0) -> tuple[int, int]:
        """SIGKILL the tenant's master and wait until its replica is promoted (after the node
        timeout): writes not yet replicated are lost. Returns (old port, new master port)."""
        old = self.master_of_tenant(tenant)
        new = self.replica_of(old)
        self.node(old).kill()
        _wait(lambda: self._promoted(new), timeout, f"the replica on {new} promoted")
        return old, new

    def _promoted(self, port: int) -> bool:
        with self.node(port).client() as c:
            role: Any = c.execute_command("ROLE")
            info: Any = c.cluster("info")
        return bool(role[0] == b"master" and info.get("cluster_state") == "ok")

    def _all_agree(self) -> bool:
        views = set()
        for n in self.nodes:
            if n.proc is None or n.proc.poll() is not None:
                continue
            with n.client() as c:
                raw: Any = c.execute_command("CLUSTER SLOTS")
            views.add(tuple(sorted((int(r[0]), int(r[2][1])) for r in raw)))
        return len(views) == 1

    def client(self) -> RedisCluster:
        return cast(RedisCluster, connect_sync(self.url))

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
        remove_dir(self.workdir)


def tenant_slot(tenant: str) -> int:
    return int(key_slot(Keys(tenant).events.encode()))


def tenants_on_distinct_masters(cluster: RedisClusterServers, count: int, prefix: str = "t") -> list[str]:
    """`count` tenant names (`<prefix>0`, `<prefix>1`, ...) whose slots are on different masters."""
    chosen: dict[int, str] = {}
    for i in range(10_000):
        name = f"{prefix}{i}"
        chosen.setdefault(cluster.master_of_tenant(name), name)
        if len(chosen) == count:
            return list(chosen.values())
    raise RuntimeError(f"fewer than {count} masters")


@dataclass
class RedisSentinelServers:
    """A master, one replica and `sentinels` sentinels watching it as `service`, on loopback."""

    service: str = "cc"
    sentinels: int = 3
    down_after_ms: int = 2000
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cc-rsentinel-")))
    data: list[_Node] = field(default_factory=list)
    watchers: list[_Node] = field(default_factory=list)
    paused_s: float = 0.0   # how long the last planned failover held the writes

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{n.port}" for n in self.watchers) + f"/{self.service}"

    def start(self, timeout: float = 30.0) -> RedisSentinelServers:
        try:
            master_port = free_port()
            for port, extra in ((master_port, ()), (free_port(), ("--replicaof", "127.0.0.1", str(master_port)))):
                d = self.workdir / str(port)
                d.mkdir()
                self.data.append(_Node(port, d, _server_args(port, d, *extra)).start())
            _wait(lambda: self._replicas_of(master_port) == 1, timeout, "the replica in sync")
            for _ in range(self.sentinels):
                port = free_port()
                d = self.workdir / str(port)
                d.mkdir()
                conf = d / "sentinel.conf"
                conf.write_text(
                    f"port {port}\nbind 127.0.0.1\ndir {d}\nlogfile {d / 'sentinel.log'}\n"
                    f"sentinel monitor {self.service} 127.0.0.1 {master_port} 2\n"
                    f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                    f"sentinel failover-timeout {self.service} 10000\n"
                    f"sentinel parallel-syncs {self.service} 1\n")
                self.watchers.append(_Node(port, d, [_exe("redis-server"), str(conf), "--sentinel"]).start())
            _wait(self._sentinels_see_all, timeout, "every sentinel knowing the replica and the other sentinels")
        except BaseException:
            self.stop()
            raise
        return self

    def _replicas_of(self, port: int) -> int:
        with self.data_node(port).client() as c:
            return online_replicas(c)

    def _sentinels_see_all(self) -> bool:
        for s in self.watchers:
            with s.client() as c:
                m: Any = c.sentinel_master(self.service)
            if int(m["num-slaves"]) < 1 or int(m["num-other-sentinels"]) < self.sentinels - 1:
                return False
        return True

    def data_node(self, port: int) -> _Node:
        return next(n for n in self.data if n.port == port)

    def master_port(self) -> int:
        with self.watchers[0].client() as c:
            _host, port = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(port)

    def failover(self, timeout: float = 30.0, planned: bool = True) -> tuple[int, int]:
        """`SENTINEL FAILOVER`: the replica is promoted, the old master made its replica. Returns
        (old master port, new master port) once the new master takes writes.

        Sentinel does not wait for the replica: writes the old master takes between the promotion
        and its demotion, and what it had not replicated, are lost. `planned` does what an operator
        should: `CLIENT PAUSE WRITE` on the master, wait for the replica to have every write, fail
        over, wait for every sentinel to name the new master, close the old master's client
        connections (they reconnect through the sentinels, to the new master), then unpause it (the
        sentinels' demotion of it waits for that)."""
        old = self.master_port()
        old_node = self.data_node(old)
        paused = time.monotonic()
        if planned:
            with old_node.client() as c:
                c.execute_command("CLIENT", "PAUSE", int(timeout * 1000), "WRITE")
            _wait(self._replica_caught_up, timeout, "the replica having every write of the paused master")
        with self.watchers[0].client() as c:
            c.execute_command("SENTINEL", "FAILOVER", self.service)
        _wait(lambda: self.master_port() != old and self._is_master(self.master_port()), timeout,
              "the sentinels naming a new master")
        if planned:
            _wait(lambda: old not in self._named_masters(), timeout, "every sentinel naming the new master")
            with old_node.client() as c:
                c.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
                c.execute_command("CLIENT", "UNPAUSE")
            self.paused_s = time.monotonic() - paused
        return old, self.master_port()

    def _named_masters(self) -> set[int]:
        ports = set()
        for s in self.watchers:
            with s.client() as c:
                _host, port = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
            ports.add(int(port))
        return ports

    def _replica_caught_up(self) -> bool:
        master = self.master_port()
        with self.data_node(master).client() as c:
            offset = int(c.info("replication")["master_repl_offset"])
        replica = next(n for n in self.data if n.port != master)
        with replica.client() as c:
            return int(c.info("replication").get("slave_repl_offset", -1)) >= offset

    def _is_master(self, port: int) -> bool:
        with self.data_node(port).client() as c:
            return bool(c.info("replication").get("role") == "master")

    def client(self) -> redis.Redis:
        return connect_sync(self.url)

    def stop(self) -> None:
        for n in (*self.watchers, *self.data):
            n.stop()
        remove_dir(self.workdir)
