"""Run SIPp processes as real SIP peers (callers, agents, media servers) on loopback.

Every run is bounded: `-m` calls, `-timeout` for the whole run, and `wait()` kills a process that
outlives its own limit. SIPp's exit code: 0 = every call succeeded, 1 = at least one failed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from callcenter_dev.servers import free_port, stop_process, udp_port_bound


@dataclass
class Sipp:
    """One SIPp process playing a scenario on a loopback port."""

    scenario: Path
    port: int = 0
    remote: str | None = None          # host:port for a UAC
    service: str | None = None         # Request-URI user part for a UAC (-s)
    calls: int = 1                     # -m
    timeout_s: float = 30.0            # -timeout (whole run)
    rate: float | None = None          # -r calls per second (UAC)
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    logdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cc-sipp-")))

    @property
    def uri_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Sipp:
        exe = shutil.which("sipp")
        if exe is None:
            raise RuntimeError("sipp is not installed (apt-get install sip-tester)")
        if not self.port:
            self.port = free_port(kind=2)  # SOCK_DGRAM
        args = [exe, "-sf", str(self.scenario), "-i", "127.0.0.1", "-p", str(self.port), "-m", str(self.calls),
                "-timeout", f"{int(self.timeout_s)}s", "-nostdin", "-buff_size", "4194304",
                "-trace_err", "-error_file", str(self.logdir / "errors.log"),
                "-trace_screen", "-screen_file", str(self.logdir / "screen.log"),
                "-trace_logs", "-log_file", str(self.logdir / "scenario.log"),
                "-timeout_error", "-max_recv_loops", "1000"]
        if self.rate is not None:
            args += ["-r", str(self.rate)]
        if self.service:
            args += ["-s", self.service]
        args += self.extra
        if os.environ.get("CC_SIPP_TRACE_MSG"):   # debugging aid: every message each SIPp sent and got
            args += ["-trace_msg", "-message_file", str(self.logdir / "messages.log")]
        if self.remote:
            args.append(self.remote)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.logdir)
        if not self.remote:  # a UAS: return once it listens, so nothing is sent to it too early
            deadline = time.monotonic() + 5
            while not udp_port_bound(self.port) and time.monotonic() < deadline and self.proc.poll() is None:
                time.sleep(0.02)
        return self

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout if timeout is not None else self.timeout_s + 10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return -9

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        stop_process(self.proc)

    def scenario_log(self) -> str:
        """What the scenario's <log> actions wrote (e.g. the Request-URI of each INVITE received)."""
        p = self.logdir / "scenario.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def complaint(self, sip_call_id: str) -> str:
        """SIPp's first error about one call (e.g. "Aborting call on unexpected message ... while in
        message type 5 (index 6), received 'INVITE ..."), cut to its first line; "" if none."""
        p = self.logdir / "errors.log"
        text = p.read_text(errors="replace") if p.exists() else ""
        # SIPp writes its events one after the other, each starting with a date and a tab
        for event in re.split(r"(?=\d{4}-\d\d-\d\d\t)", text):
            if sip_call_id in event:
                return event.split("\t", 2)[-1].splitlines()[0][:300]
        return ""

    def errors(self) -> str:
        """SIPp's own account of what went wrong (error file and final screen), for assertion messages."""
        out = []
        for name in ("errors.log", "screen.log"):
            p = self.logdir / name
            if p.exists():
                out.append(p.read_text(errors="replace")[-3000:])
        if self.proc and self.proc.stderr and self.proc.poll() is not None:
            out.append(self.proc.stderr.read().decode(errors="replace")[-2000:])
        return "\n".join(out)


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
