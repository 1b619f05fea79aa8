"""Start the callcenter services as real processes (e2e tests, the demo, benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

SERVICES = ("sip-edge", "dispatcher", "cdr-writer", "api")


def console_script(name: str) -> str:
    """Path of a console script installed next to the running interpreter."""
    candidate = Path(sys.executable).parent / f"callcenter-{name}"
    return str(candidate) if candidate.exists() else f"callcenter-{name}"


def group_members(pgid: int) -> list[int]:
    """The live processes of process group `pgid` (zombies left out: they are gone but for their
    parent's wait, which for a reparented one is init's)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue   # gone meanwhile
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


class ChildProcess:
    """What every child process of the dev tools has: its `proc`, its `logfile` and how to read,
    stop (SIGTERM, then SIGKILL after `stop_timeout_s`) and kill it."""

    proc: subprocess.Popen[bytes] | None
    logfile: Path
    stop_timeout_s: ClassVar[float] = 15.0
    # started in a session of its own (start_new_session): a signal goes to its whole process group,
    # so the children it forked (a celery prefork pool, a browser's renderers) stop and die with it;
    # what is left of the group once the process itself has exited is killed
    own_session: ClassVar[bool] = False

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")[-5000:]

    def _signal(self, proc: subprocess.Popen[bytes], sig: int) -> None:
        if not self.own_session:
            proc.send_signal(sig)
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:   # the group is gone already
            pass

    def stop(self, timeout: float | None = None) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout_s if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self._signal(self.proc, signal.SIGKILL)
                self.proc.wait(5)
        if self.own_session and group_members(self.proc.pid):
            self._signal(self.proc, signal.SIGKILL)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self._signal(self.proc, signal.SIGKILL)
            self.proc.wait(5)


@dataclass
class ServiceProcess(ChildProcess):
    """One callcenter service run as a child process, with its environment and log file."""

    name: str                      # one of SERVICES
    env: dict[str, str]
    health_url: str | None = None  # polled until 200 by start()
    logfile: Path = field(default_factory=lambda: Path(tempfile.mkstemp(prefix="cc-svc-", suffix=".log")[1]))
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> ServiceProcess:
        return self.launch().ready(timeout)

    def launch(self) -> ServiceProcess:
        """Start the process and return at once (`ready` waits for its health check): several
        services launched first and then waited for start side by side."""
        env = {**os.environ, "CC_LOG_FORMAT": "json", **self.env}
        out = open(self.logfile, "ab")  # owned by the child for its lifetime
        self.proc = subprocess.Popen([console_script(self.name)], env=env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def ready(self, timeout: float = 20.0) -> ServiceProcess:
        """Wait until the launched process answers its health check (if it has one)."""
        assert self.proc is not None, "launch() first"
        if self.health_url:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    with urllib.request.urlopen(self.health_url, timeout=1) as resp:
                        if resp.status == 200:
                            return self
                except OSError:
                    time.sleep(0.1)
            self.stop()
            raise RuntimeError(f"{self.name} not ready at {self.health_url}:\n{self.log()}")
        return self

def create_api_key(env: dict[str, str], *, name: str = "dev", role: str = "admin", agent_id: str | None = None) -> str:
    """A new API key made with `callcenter-api create-key` against the SQL database of `env`
    (CC_DATABASE_URL): the way the first admin key of an installation is made."""
    argv = [console_script("api"), "create-key", "--name", name, "--role", role]
    if agent_id is not None:
        argv += ["--agent-id", agent_id]
    done = subprocess.run(argv, env={**os.environ, "CC_LOG_FORMAT": "json", **env}, capture_output=True, text=True,
                          timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"callcenter-api create-key failed ({done.returncode}): {done.stderr}")
    return done.stdout.strip()
