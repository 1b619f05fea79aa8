"""Start real servers on free loopback ports: redis-server (tests, benchmarks, demo)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def remove_dir(path: Path, timeout: float = 5.0) -> None:
    """Delete a server's private directory, trying again for a while: a server process that has
    just died may still be writing into it."""
    deadline = time.monotonic() + timeout
    while True:
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists() or time.monotonic() > deadline:
            return
        time.sleep(0.1)


def _udp_port_inodes(port: int) -> set[str]:
    """The sockets bound to this local UDP port, as /proc/<pid>/fd links name them (socket:[inode])."""
    needle = f":{port:04X}"
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[1].endswith(needle):
                inodes.add(f"socket:[{fields[9]}]")
    return inodes


def udp_port_bound(port: int) -> bool:
    """Whether some socket is bound to this local UDP port (read from /proc: no probing bind)."""
    return bool(_udp_port_inodes(port))


def udp_port_bound_by(port: int, pid: int) -> bool:
    """Whether process `pid` holds a socket bound to this local UDP port: the socket inodes of the
    port (/proc/net/udp) against the process's descriptors. Unlike `udp_port_bound`, another process
    that took the port does not count."""
    inodes = _udp_port_inodes(port)
    if not inodes:
        return False
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) in inodes:
                return True
        except OSError:
            continue
    return False


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1 right now for TCP and UDP alike (`kind` is kept for callers that
    say which they need), never handed out twice by this process, never 5060 or 6379.

    Why not the kernel's pick (bind to port 0): that comes from the ephemeral range, the same range
    the kernel takes the local ports of outgoing connections from (every Redis, SQL and HTTP
    client of a test run), so between our probe and the server's bind another socket could take it
    (seen as "address already in use" under load). Ports are drawn below that range instead."""
    del kind
    low, _ = _ephemeral_range()
    top = max(low - 1, 20_000)
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(500):
        port = rng.randint(15_000, top)
        if port in (5060, 5061, 6379) or port in _handed_out:
            continue
        if _bindable(port):
            _handed_out.add(port)
            return port
    raise RuntimeError("no free loopback port")


# sun_path's size on Linux, with its terminating NUL
UNIX_PATH_MAX = 108


@dataclass
class RedisServer:
    """A private redis-server on a free loopback port and a Unix socket in its own temporary
    directory (`url` names the port, `unix_url` the socket: none where the directory's path is
    too long for one, a deep TMPDIR; the port is always there)."""

    port: int = 0
    appendonly: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cc-redis-")))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket_path(self) -> Path | None:
        path = self.workdir / "redis.sock"
        return path if len(str(path)) < UNIX_PATH_MAX else None

    @property
    def unix_url(self) -> str:
        if self.socket_path is None:
            raise RuntimeError(f"no Unix socket: {self.workdir} is too deep for one (TMPDIR)")
        return f"unix://{self.socket_path}?db=0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        if not self.port:
            self.port = free_port()
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning"]
        if self.socket_path is not None:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)
