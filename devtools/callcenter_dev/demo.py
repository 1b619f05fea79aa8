"""`callcenter-demo`: the whole system on one machine, with a demo flow and two demo agents.

    callcenter-demo up     start redis-server, the four services, and SIPp processes playing the
                           media server (welcome + queue music) and two agent phones; seed the
                           flow `support` and agents 1001 and 1002 through the API; log them in
    callcenter-demo call   place one call with SIPp and print what happened and its CDR

Everything listens on 127.0.0.1. State (ports, files) lives in ./var/demo.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from callcenter_dev.processes import ServiceProcess, create_api_key
from callcenter_dev.scenarios import scenario
from callcenter_dev.servers import RedisServer, free_port
from callcenter_dev.sipp import Sipp

STATE_DIR = Path("var/demo")
STATE_FILE = STATE_DIR / "state.json"
FLOW = "support"
AGENTS = ("1001", "1002")


def port_or_free(preferred: int, kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port(kind)


def api_call(base: str, key: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def up(args: argparse.Namespace) -> int:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(port=port_or_free(args.redis_port), appendonly=True).start()
    sip_port = port_or_free(args.sip_port, socket.SOCK_DGRAM)
    api_port = port_or_free(args.api_port)
    api = f"http://127.0.0.1:{api_port}"
    db = f"sqlite:///{(STATE_DIR / 'callcenter.sqlite3').resolve()}"
    # the services reach the local redis-server by its Unix socket (cheaper than TCP on loopback:
    # docs/operations.md), or its port where TMPDIR is too deep for a socket; the port stays open
    # for redis-cli and the demo's own tools
    redis_url = redis.unix_url if redis.socket_path else redis.url
    common = {"CC_REDIS_URL": redis_url, "CC_TENANT": "default", "CC_WRAPUP_S": str(args.wrapup),
              "CC_LOG_FORMAT": "json"}
    # SIPp plays the media server and the agents' phones
    welcome = Sipp(scenario("media_welcome.xml"), calls=1_000_000, timeout_s=86_400,
                   extra=["-d", str(args.welcome_ms)]).start()
    queue = Sipp(scenario("media_queue.xml"), calls=1_000_000, timeout_s=86_400).start()
    phones = [Sipp(scenario("agent.xml"), calls=1_000_000, timeout_s=86_400).start() for _ in AGENTS]
    health = {name: free_port() for name in ("dispatcher", "cdr-writer", "sip-edge")}
    # the demo's admin key, made against SQL before the api starts (printed below, kept in the state file)
    key = create_api_key({**common, "CC_DATABASE_URL": db}, name="demo")
    services = [
        ServiceProcess("api", {**common, "CC_DATABASE_URL": db, "CC_API_PORT": str(api_port)},
                       health_url=f"{api}/healthz"),
        ServiceProcess("dispatcher", {**common, "CC_HEALTH_PORT": str(health["dispatcher"])},
                       health_url=f"http://127.0.0.1:{health['dispatcher']}/healthz"),
        ServiceProcess("cdr-writer", {**common, "CC_DATABASE_URL": db, "CC_HEALTH_PORT": str(health["cdr-writer"])},
                       health_url=f"http://127.0.0.1:{health['cdr-writer']}/healthz"),
        ServiceProcess("sip-edge", {**common, "CC_SIP_PORT": str(sip_port), "CC_EDGE_ID": "edge-demo",
                                    "CC_HEALTH_PORT": str(health["sip-edge"])},
                       health_url=f"http://127.0.0.1:{health['sip-edge']}/healthz"),
    ]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for svc in services:
            svc.start()
        api_call(api, key, "PUT", f"/v1/flows/{FLOW}", {
            "skill": "support", "priority": 0,
            "welcome_uri": f"sip:welcome@127.0.0.1:{welcome.port}",
            "queue_uri": f"sip:queue@127.0.0.1:{queue.port}"})
        for agent_id, phone in zip(AGENTS, phones, strict=True):
            api_call(api, key, "PUT", f"/v1/agents/{agent_id}",
                     {"uri": f"sip:{agent_id}@127.0.0.1:{phone.port}", "skills": ["support"]})
            api_call(api, key, "POST", f"/v1/agents/{agent_id}/login")
        STATE_FILE.write_text(json.dumps({"sip_port": sip_port, "api": api, "redis": redis.url, "key": key}))
        print(f"""
callcenter is up.
  Call the flow '{FLOW}':  sip:{FLOW}@127.0.0.1:{sip_port}   (UDP)
  API docs:               {api}/docs
  Admin API key:          {key}
                          (shown once; the command line: export CC_API_URL={api} CC_API_KEY=<the key>,
                          then e.g. `callcenter agent list`)
  Agents logged in:       {", ".join(AGENTS)} (SIPp phones that answer after 1 s)
  Place a demo call:      scripts/demo-call
  Logs:                   {", ".join(str(s.logfile) for s in services)}
Ctrl-C stops everything.
""", flush=True)
        while not stopping:
            for svc in services:
                if svc.proc is not None and svc.proc.poll() is not None:
                    print(f"{svc.name} exited with {svc.proc.returncode}:\n{svc.log()}", file=sys.stderr)
                    return 1
            time.sleep(0.5)
        return 0
    finally:
        for svc in reversed(services):
            svc.stop()
        for peer in (welcome, queue, *phones):
            peer.stop()
        redis.stop()
        STATE_FILE.unlink(missing_ok=True)


def call(args: argparse.Namespace) -> int:
    if not STATE_FILE.exists():
        print("callcenter is not running: start it with scripts/up", file=sys.stderr)
        return 2
    state = json.loads(STATE_FILE.read_text())
    caller = Sipp(scenario("caller.xml"), remote=f"127.0.0.1:{state['sip_port']}", service=FLOW, calls=1,
                  timeout_s=60, extra=["-d", str(args.talk_ms)])
    print(f"calling sip:{FLOW}@127.0.0.1:{state['sip_port']} ...", flush=True)
    rc = caller.start().wait()
    print("SIP outcome:", "call answered by an agent and hung up normally" if rc == 0
          else f"failed (SIPp exit {rc})\n{caller.errors()}")
    cdrs: list[Any] = []
    for _ in range(50):  # the cdr-writer commits in batches: give it a moment
        try:
            cdrs = api_call(state["api"], state["key"], "GET", "/v1/cdrs?limit=1&kind=final")["items"]
        except urllib.error.URLError:
            cdrs = []
        if cdrs:
            break
        time.sleep(0.1)
    print("latest CDR:", json.dumps(cdrs[0] if cdrs else None, indent=2))
    return 0 if rc == 0 else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="callcenter-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the whole system with the demo flow and agents")
    p_up.add_argument("--sip-port", type=int, default=5060)
    p_up.add_argument("--api-port", type=int, default=8080)
    p_up.add_argument("--redis-port", type=int, default=6379)
    p_up.add_argument("--wrapup", type=int, default=5, help="agents' wrap-up seconds")
    p_up.add_argument("--welcome-ms", type=int, default=2000, help="length of the welcome message")
    p_up.set_defaults(func=up)
    p_call = sub.add_parser("call", help="place one demo call with SIPp")
    p_call.add_argument("--talk-ms", type=int, default=3000)
    p_call.set_defaults(func=call)
    args = parser.parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
