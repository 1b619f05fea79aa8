"""Restart a sip-edge on its own port and id, as a supervisor does (Kubernetes, systemd `Restart=`).

Between the SIGKILL of an edge and the bind of its successor the UDP port is free for a second or
more (the successor first waits for the dead one's lease on the id, half the lapse). On a busy
machine another process can take it meanwhile (another test's SIPp or server picks its port in the
same range). The successor then refuses to start (exit 75, `edge.start_refused`) and a supervisor
starts it again: so does `restart_on_its_port`, until the port is this edge's or the time is up.
"Listening" means this process holds the port (`udp_port_bound_by`): a port bound by the intruder
does not count, or a harness would take a dead edge for a live one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from callcenter_dev.processes import ServiceProcess
from callcenter_dev.servers import udp_port_bound_by

EXIT_START_REFUSED = 75   # callcenter_sip_edge.ownership.EXIT_START_REFUSED (devtools import no service)


def start_holding_its_port(svc: ServiceProcess, deadline: float) -> int | None:
    """Start the edge `svc` and wait until it holds its SIP port (None) or exits (its exit code;
    stopped at `deadline`: its exit code then too)."""
    port = int(svc.env["CC_SIP_PORT"])
    try:
        svc.start()
    except RuntimeError:   # exited before its health check answered
        if svc.proc is None or svc.proc.returncode is None:
            raise
        return svc.proc.returncode
    while svc.proc is not None and svc.proc.poll() is None and time.monotonic() < deadline:
        if udp_port_bound_by(port, svc.proc.pid):
            return None
        time.sleep(0.05)
    return svc.stop()


def restart_on_its_port(old: ServiceProcess, timeout_s: float = 30.0, retry_s: float = 0.2) -> ServiceProcess:
    """Start the edge `old` was (its environment, health port and log file) and return once the new
    process holds its SIP port; an exit 75 (port or id held by another process) is followed by
    another start after `retry_s`. Raises RuntimeError on any other exit or after `timeout_s`."""
    old.stop()
    return start_on_its_port(lambda: ServiceProcess(old.name, old.env, health_url=old.health_url, logfile=old.logfile),
                             timeout_s, retry_s)


def start_on_its_port(make: Callable[[], ServiceProcess], timeout_s: float = 30.0,
                      retry_s: float = 0.2) -> ServiceProcess:
    """Start the edge `make()` gives (a new process each try: a successor, a peer taking over a
    lost edge's address) and return once it holds its SIP port; an exit 75 is followed by another
    start after `retry_s`. Raises RuntimeError on any other exit or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    refused = 0
    while True:
        svc = make()
        code = start_holding_its_port(svc, deadline)
        if code is None:
            return svc
        refused += 1
        if code != EXIT_START_REFUSED or time.monotonic() > deadline:
            raise RuntimeError(f"{svc.name} did not take its port {svc.env['CC_SIP_PORT']} (exit {code}, "
                               f"{refused} start(s) refused in {timeout_s:g} s):\n{svc.log()}")
        time.sleep(retry_s)
