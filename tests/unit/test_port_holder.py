"""callcenter_dev.servers.udp_port_bound_by: a UDP port counts as a process's only when that process
holds the socket (the edge restart helper must not take an intruder's socket for the edge's)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from callcenter_dev.servers import free_port, udp_port_bound, udp_port_bound_by


def test_the_holder_of_a_udp_port_is_told_from_another_process() -> None:
    port = free_port(socket.SOCK_DGRAM)
    assert not udp_port_bound_by(port, os.getpid())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        assert udp_port_bound(port)
        assert udp_port_bound_by(port, os.getpid())
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            assert not udp_port_bound_by(port, other.pid)   # bound, but not by that process
        finally:
            other.kill()
            other.wait()
    assert not udp_port_bound_by(port, os.getpid())
