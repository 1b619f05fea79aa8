"""Calls per second through the SIP edge over UDP, TCP and TLS, in one run.

For each transport in turn: a sip-edge stack in a child process (this file with `--serve`: a
SipStack with TCP and TLS on, whose scripted dispatcher rings the agent at once on every
`call_arrived`), one SIPp agent (UAS, answers at once with SDP) and one SIPp caller (UAC) that
places --calls calls at --rate per second, each INVITE -> 200 -> ACK -> BYE. TCP: SIPp `-t t1`
(all calls over one connection, as a carrier's trunk). TLS: Debian's SIPp has no OpenSSL, so both
SIPp run over TCP behind a `TlsRelay` (tests/sip/stream_harness.py) in this process; the edge
speaks TLS to the relays (its certificate from a throw-away CA). Per transport it prints: calls
completed / failed, wall time and completed calls per second, the edge's CPU ms per call
(utime + stime of the child from /proc).

    .venv/bin/python bench/edge_transports.py                     # 2,000 calls at 100/s per transport
    .venv/bin/python bench/edge_transports.py --rate 200 --calls 4000
    .venv/bin/python bench/edge_transports.py --quick             # 200 calls at 50/s (a smoke run)

Numbers depend on the machine and what else runs on it: compare the transports of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "sip"))

from stream_harness import (  # noqa: E402
    Certificates,
    TlsRelay,
    free_stream_port,
    make_certificates,
    stream_scenario,
    tcp_listening,
)

LOOPBACK = "127.0.0.1"
TRANSPORTS = ("udp", "tcp", "tls")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def serve(agent_uri: str, certs_dir: str) -> None:
    """Child: a stack with UDP, TCP and TLS; rings `agent_uri` on every call; prints its ports.

    Its log lines go to stderr (a file the parent names) at CC_LOG_LEVEL: unconfigured, structlog
    prints every info line to stdout, which is a pipe the parent stops reading after the ports
    line; once the pipe's 64 KiB filled (a few hundred calls), the edge blocked in a write and no
    call completed after it."""
    from callcenter.logs import configure_logging
    from callcenter_sip_edge.facts import Fact
    from callcenter_sip_edge.sip_stack import SipStack
    from callcenter_sip_edge.sippy.streams import StreamOptions

    configure_logging(os.environ.get("CC_LOG_LEVEL", "warning"))
    certs = Path(certs_dir)
    stack: SipStack | None = None

    def on_fact(fact: Fact) -> None:
        if fact.kind == "call_arrived" and stack is not None:
            stack.ring(fact.call_id, "o", "a", agent_uri, 30.0)

    stack = SipStack(host=LOOPBACK, port=0, on_fact=on_fact, loop=asyncio.get_running_loop(),
                     streams=StreamOptions(tcp_port=0, tls_port=0, tls_certfile=str(certs / "cert.pem"),
                                           tls_keyfile=str(certs / "key.pem"), tls_cafile=str(certs / "ca.pem"),
                                           max_connections_per_source=1000))
    stack.start()
    assert stack.bound_address is not None
    ports = {"udp": stack.bound_address[1], **stack.stream_ports}
    print("PORTS " + " ".join(f"{k}={v}" for k, v in ports.items()), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)   # until the parent closes it
    stack.stop()


def sipp_cmd(scenario_file: Path, transport: str, port: int, calls: int, rate: float,
             remote_port: int | None) -> list[str]:
    cmd = ["sipp", "-sf", str(scenario_file), "-t", "u1" if transport == "udp" else "t1", "-i", LOOPBACK,
           "-p", str(port), "-m", str(calls), "-nostdin", "-buff_size", "4194304", "-timeout", "300s",
           "-max_socket", "1000"]
    if remote_port is not None:
        cmd += ["-r", str(rate), "-s", "support", "-d", "0", f"{LOOPBACK}:{remote_port}"]
    return cmd


def run_one(transport: str, calls: int, rate: float, certs: Certificates, workdir: Path) -> dict[str, float]:
    agent_port, caller_port = free_stream_port(), free_stream_port()
    agent_relay = TlsRelay(certs, agent_port, None) if transport == "tls" else None
    agent_sip_port = agent_relay.tls_port if agent_relay is not None else agent_port
    agent_uri = f"sip:agent@{LOOPBACK}:{agent_sip_port}" + ("" if transport == "udp" else f";transport={transport}")
    edge_log = (workdir / f"{transport}-edge.log").open("w")
    edge = subprocess.Popen([sys.executable, __file__, "--serve", agent_uri, str(certs.cert.parent)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=edge_log, text=True,
                            env={**os.environ, "CC_LOG_LEVEL": "warning"})
    try:
        assert edge.stdout is not None
        line = ""
        while not line.startswith("PORTS "):   # the child's log lines come first
            line = edge.stdout.readline()
            if not line:
                raise RuntimeError("the edge did not start")
        ports = dict(item.split("=", 1) for item in line.split()[1:])
        edge_port = int(ports[transport])
        caller_relay = TlsRelay(certs, caller_port, edge_port) if transport == "tls" else None
        for name, relay in (("agent", agent_relay), ("caller", caller_relay)):
            scenario = "agent_early_uas" if name == "agent" else "caller_answered_bye"
            text = (REPO / "tests" / "sipp" / f"{scenario}.xml").read_text() if transport == "udp" \
                else stream_scenario(scenario, relay)
            (workdir / f"{transport}-{name}.xml").write_text(text)
        agent = subprocess.Popen(sipp_cmd(workdir / f"{transport}-agent.xml", transport, agent_port, calls, rate,
                                          None), cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while transport != "udp" and not tcp_listening(agent_port) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        cpu_before = cpu_seconds(edge.pid)
        started = time.monotonic()
        remote = caller_relay.plain_port if caller_relay is not None else edge_port
        caller_cmd = sipp_cmd(workdir / f"{transport}-caller.xml", transport, caller_port, calls, rate, remote)
        caller = subprocess.run(
            [*caller_cmd, "-trace_stat", "-stf", str(workdir / f"{transport}-stat.csv")],
            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=calls / rate + 120)
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(edge.pid) - cpu_before
        agent.terminate()
        agent.wait(10)
        for relay in (agent_relay, caller_relay):
            if relay is not None:
                relay.close()
        successful, failed = _counts(workdir / f"{transport}-stat.csv")
        return {"rc": caller.returncode, "completed": successful, "failed": failed, "elapsed_s": elapsed,
                "calls_per_s": successful / elapsed if elapsed else 0.0,
                "edge_cpu_ms_per_call": 1000 * cpu / successful if successful else float("nan")}
    finally:
        if edge.stdin is not None:
            edge.stdin.close()
        try:
            edge.wait(15)
        except subprocess.TimeoutExpired:
            edge.kill()
        edge_log.close()


def _counts(stat_file: Path) -> tuple[int, int]:
    """SIPp's cumulative successful and failed calls from the last line of its -trace_stat file."""
    lines = [line for line in stat_file.read_text().splitlines() if line.strip()]
    header, last = lines[0].split(";"), lines[-1].split(";")
    values = dict(zip(header, last, strict=False))
    return int(values.get("SuccessfulCall(C)", 0)), int(values.get("FailedCall(C)", 0))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        asyncio.run(serve(sys.argv[2], sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--quick", action="store_true", help="200 calls at 50/s per transport")
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    args = parser.parse_args()
    calls, rate = (200, 50.0) if args.quick else (args.calls, args.rate)
    with tempfile.TemporaryDirectory(prefix="edge-transports-") as tmp:
        workdir = Path(tmp)
        certs = make_certificates(workdir / "tls")
        print(f"{calls} calls at {rate}/s per transport")
        print(f"{'transport':<10}{'completed':>10}{'failed':>8}{'wall s':>9}{'calls/s':>9}{'edge CPU ms/call':>18}")
        for transport in args.transports.split(","):
            r = run_one(transport, calls, rate, certs, workdir)
            print(f"{transport:<10}{r['completed']:>10}{r['failed']:>8}{r['elapsed_s']:>9.1f}"
                  f"{r['calls_per_s']:>9.1f}{r['edge_cpu_ms_per_call']:>18.2f}", flush=True)


if __name__ == "__main__":
    main()
