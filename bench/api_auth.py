"""Auth cost benchmark: agent pause/unpause toggles per second with authentication on and off.

Two api processes in the same run against one private redis-server and SQLite database: one with
authentication on, driven with an agent key bound to the agent it toggles, one with `CC_API_AUTH=off`
(no credential sent). Both serve the same routes (`POST /v1/agents/{id}/pause` and `/unpause`) on the
same agent, which is provisioned and logged in first. Each run is `--clients` concurrent httpx clients
(one keep-alive connection each) alternating pause and unpause until `--requests` requests are done
or `--max-s` seconds pass. The runs alternate (on, off, on, off, ...) so a busy machine hurts both
alike.

Printed per run and per mode: requests/s, latency p50/p99, non-2xx answers, and the api process's
CPU time per request (from /proc: the number least disturbed by other load on the machine); then
the auth cost: how much lower the rate with auth is, and how much more CPU a request takes.

    .venv/bin/python bench/api_auth.py [--quick] [--clients 20] [--requests 4000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field

import httpx
from apibench import Rig, cpu_s, pct, pid_of, rig

AGENT = "a1"


@dataclass
class Run:
    """One timed run against one api process."""

    mode: str  # "on" or "off"
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed_s: float = 0.0
    api_cpu_s: float = 0.0
    client_cpu_s: float = 0.0  # this process (the load generator): if it nears a core, it is the limit

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else float("nan")


async def client(url: str, headers: dict[str, str], run: Run, budget: list[int], deadline: float) -> None:
    """Alternate pause and unpause of AGENT until the shared budget is spent or the deadline passes."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=10) as http:
        pause = True
        while budget[0] > 0 and time.monotonic() < deadline:
            budget[0] -= 1
            t0 = time.perf_counter()
            if pause:
                resp = await http.post(f"/v1/agents/{AGENT}/pause", json={"reason": "bench"})
            else:
                resp = await http.post(f"/v1/agents/{AGENT}/unpause")
            run.latencies_ms.append((time.perf_counter() - t0) * 1000)
            if resp.status_code != 200:
                run.errors += 1
            pause = not pause


async def timed_run(mode: str, url: str, pid: int, headers: dict[str, str], clients: int, requests: int,
                    max_s: float) -> Run:
    run = Run(mode)
    budget = [requests]
    cpu0, own0, t0 = cpu_s(pid), time.process_time(), time.perf_counter()
    deadline = time.monotonic() + max_s
    await asyncio.gather(*(client(url, headers, run, budget, deadline) for _ in range(clients)))
    run.elapsed_s, run.api_cpu_s = time.perf_counter() - t0, cpu_s(pid) - cpu0
    run.client_cpu_s = time.process_time() - own0
    return run


def line(label: str, runs: list[Run]) -> str:
    lat = [ms for r in runs for ms in r.latencies_ms]
    n = sum(r.requests for r in runs)
    elapsed = sum(r.elapsed_s for r in runs)
    cpu = sum(r.api_cpu_s for r in runs) * 1e6 / n
    client = sum(r.client_cpu_s for r in runs) / elapsed
    return (f"{label:<10} {n:6d} requests {n / elapsed:8.0f}/s   p50 {pct(lat, 0.5):6.2f} ms  "
            f"p99 {pct(lat, 0.99):6.2f} ms   non-2xx {sum(r.errors for r in runs)}   api CPU {cpu:6.0f} µs/request"
            f"   client CPU {client:4.0%} of a core")


def setup(r: Rig) -> tuple[str, str, int, int, str]:
    """Provision and log in AGENT; start both api processes. Returns (url on, url off, pid on, pid off,
    the agent key)."""
    admin = r.key(name="bench-admin", role="admin")
    agent_key = r.key(name="bench-agent", role="agent", agent_id=AGENT)
    on, url_on = r.api()
    off, url_off = r.api(CC_API_AUTH="off")
    with httpx.Client(base_url=url_on, headers={"Authorization": f"Bearer {admin}"}, timeout=10) as http:
        resp = http.put(f"/v1/agents/{AGENT}", json={"uri": f"sip:{AGENT}@127.0.0.1:9", "skills": ["bench"]})
        resp.raise_for_status()
        http.post(f"/v1/agents/{AGENT}/login").raise_for_status()
    return url_on, url_off, pid_of(on), pid_of(off), agent_key


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 5 clients, 200 requests, 1 round")
    ap.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    ap.add_argument("--requests", type=int, default=4000, help="requests per run (default 4000)")
    ap.add_argument("--rounds", type=int, default=3, help="runs per mode, alternating (default 3)")
    ap.add_argument("--max-s", type=float, default=60.0, help="time bound of one run (default 60 s)")
    args = ap.parse_args()
    if args.quick:
        args.clients, args.requests, args.rounds, args.max_s = 5, 200, 1, 20.0
    with rig() as r:
        url_on, url_off, pid_on, pid_off, agent_key = setup(r)
        modes = {"on": (url_on, pid_on, {"Authorization": f"Bearer {agent_key}"}), "off": (url_off, pid_off, {})}
        for mode, (url, pid, headers) in modes.items():  # warm-up: connections, caches, the key's row
            await timed_run(mode, url, pid, headers, args.clients, min(args.requests, 200), args.max_s)
        print(f"api auth cost: agent {AGENT} pause/unpause, {args.clients} clients (keep-alive), "
              f"{args.requests} requests per run, {args.rounds} round(s) alternating on/off; python "
              f"{sys.version.split()[0]}")
        runs: list[Run] = []
        for i in range(args.rounds):
            for mode, (url, pid, headers) in modes.items():
                run = await timed_run(mode, url, pid, headers, args.clients, args.requests, args.max_s)
                runs.append(run)
                print(line(f"run {i + 1} {mode}", [run]))
        on = [x for x in runs if x.mode == "on"]
        off = [x for x in runs if x.mode == "off"]
        print(line("auth on", on))
        print(line("auth off", off))
        rate_on = sum(x.requests for x in on) / sum(x.elapsed_s for x in on)
        rate_off = sum(x.requests for x in off) / sum(x.elapsed_s for x in off)
        cpu_on = sum(x.api_cpu_s for x in on) / sum(x.requests for x in on)
        cpu_off = sum(x.api_cpu_s for x in off) / sum(x.requests for x in off)
        print(f"auth cost: rate {1 - rate_on / rate_off:+.1%} lower with auth; api CPU per request "
              f"{cpu_on / cpu_off - 1:+.1%} (aim: under 10 %)")


if __name__ == "__main__":
    asyncio.run(main())
