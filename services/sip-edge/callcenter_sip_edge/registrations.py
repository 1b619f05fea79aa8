"""Registrations on the asyncio side: verify a REGISTER's digest, keep its bindings in Redis, and
find the contacts to ring for an agent whose SIP URI is its AOR.

Reads: `RegisterRequest`s from sippy's turns (`registrar.py`), `cc:{t}:sipauth:<agent>` (the HA1s),
`cc:{t}:aor:<agent>` and its bindings. Writes: bindings through `sip_register.lua` (one atomic step:
limits, replays, the `unregistered` pause of an agent left without contact), and each REGISTER's
`Reply`.

Failed authentications are counted per source IP and per AOR (`FailureLimiter`); past the limit a
REGISTER gets 503 with Retry-After before Redis is asked anything. An unknown agent and a wrong
password get the same 403 after the same work (a response computed against a random HA1).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import redis.asyncio as aioredis
import structlog

from callcenter.redis import REDIS_DOWN
from callcenter.sip_credentials import HA1_FIELD
from callcenter.store import RC
from callcenter.store.keys import Keys
from callcenter.store.scripts import Store
from callcenter_sip_edge.digest import Credentials, NonceCounts, Nonces, parse_authorization, response_matches
from callcenter_sip_edge.log_limits import RateLimitedLog
from callcenter_sip_edge.registrar import RegisterRequest, RegistrarOptions, Reply, challenge_reply

log = structlog.get_logger(__name__)

FORBIDDEN = Reply(403, "Forbidden")
# the refusal of a ring whose agent is registered only over connections another edge holds
ELSEWHERE = "registered_elsewhere"
REDIS_TIMEOUT_S = 5.0
TOO_MANY_REGISTRATIONS_RETRY_S = 60
# REGISTERs being verified at once (each waits on Redis); more, from however many sources: 503
MAX_IN_FLIGHT = 1000
BUSY = Reply(503, "Service Unavailable", (("retry-after", "5"),))
MAX_TRACKED_KEYS = 20_000
_URI = re.compile(r"^(sips?):(?:([^@;?>]*)@)?(\[[^\]]+\]|[^:;?>]+)(?::(\d+))?(.*)$", re.IGNORECASE)


class FailureLimiter:
    """Failures per key (a source IP, an AOR) in fixed one-minute windows; a key at the limit is
    refused until its window ends. Bounded: the oldest windows are forgotten first."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def retry_after(self, key: str) -> int | None:
        """Seconds until `key` may try again, None if it may now."""
        window = self._windows.get(key)
        if window is None:
            return None
        left = 60.0 - (self._clock() - window[0])
        if left <= 0:
            del self._windows[key]
            return None
        return max(1, int(left + 0.999)) if window[1] >= self.per_minute else None

    def failed(self, key: str) -> None:
        now = self._clock()
        started, count = self._windows.get(key, (now, 0))
        if now - started >= 60.0:
            started, count = now, 0
        self._windows[key] = (started, count + 1)
        self._windows.move_to_end(key)
        while len(self._windows) > MAX_TRACKED_KEYS:
            self._windows.popitem(last=False)


@dataclass(frozen=True)
class Binding:
    """One registered contact, as kept in `cc:{t}:aor:<agent>:bindings`."""

    uri: str
    received: str          # host:port the REGISTER came from
    transport: str         # what it came by: udp, tcp, tls
    expiry_ms: int
    q: float = 1.0
    instance: str | None = None
    path: tuple[str, ...] = ()
    edge: str = ""

    def reachable_from(self, edge_id: str) -> bool:
        """Whether the edge `edge_id` can ring this contact: over UDP or through a Path any edge can;
        over a connection the phone opened (TCP, TLS, WS, WSS) only the edge that holds it, the one
        that took the REGISTER (another would open a new connection to the phone's source port,
        which a NAT drops: a ring timeout instead of an answer). A binding that names no edge is
        taken as reachable (as before edges were recorded)."""
        return self.transport == "udp" or bool(self.path) or not self.edge or self.edge == edge_id

    def target(self) -> str:
        """The URI to ring. Over TCP/TLS: the address the REGISTER came from, so the INVITE goes back
        over the connection the phone opened (stream_routing finds it by the peer's address). Over
        UDP: the Contact, unless it names another IP than the REGISTER came from and that IP is
        private or not an IP at all (a phone behind NAT): then the address it came from."""
        if self.path:
            # RFC 3327: to the Contact through the proxies the REGISTER came by (the first Path
            # URI is the next hop, all of them the INVITE's Route set)
            return f"{self.uri}?Route={quote(','.join(self.path), safe='')}"
        match = _URI.match(self.uri)
        if match is None:
            return self.uri
        _scheme, user, host, _port, _rest = match.groups()
        rhost, _, rport = self.received.rpartition(":")
        if self.transport == "udp":
            contact_ip = _ip(host)
            if contact_ip is not None and (str(contact_ip) == rhost.strip("[]") or not _unroutable(contact_ip)):
                return self.uri
        rhost = f"[{rhost}]" if ":" in rhost and not rhost.startswith("[") else rhost
        user_part = f"{user}@" if user else ""
        return f"sip:{user_part}{rhost}:{rport};transport={self.transport}"


def binding_json(request: RegisterRequest, uri: str, q: str | None, instance: str | None, edge: str) -> str:
    host = f"[{request.source[0]}]" if ":" in request.source[0] else request.source[0]
    return json.dumps({"uri": uri, "q": q, "instance": instance, "received": f"{host}:{request.source[1]}",
                       "transport": request.transport, "path": list(request.path), "edge": edge,
                       "call_id": request.call_id, "cseq": request.cseq}, separators=(",", ":"))


def binding_of(raw: str, expiry_ms: int) -> Binding:
    data = json.loads(raw)
    try:
        q = float(data.get("q") or 1.0)
    except ValueError:
        q = 1.0
    return Binding(uri=str(data["uri"]), received=str(data.get("received", "")), transport=str(data.get("transport",
                   "udp")), expiry_ms=int(expiry_ms), q=q, instance=data.get("instance"),
                   path=tuple(data.get("path") or ()), edge=str(data.get("edge", "")))


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _unroutable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address a phone has behind NAT: private (RFC 1918, ULA), loopback, link-local, CGNAT."""
    return ip.is_private or ip.is_loopback or ip.is_link_local or ip in _CGNAT


_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class Registrations:
    """REGISTERs with credentials (from sippy's turns) and the contacts of AORs (for rings)."""

    def __init__(self, redis: aioredis.Redis, tenant: str, edge_id: str, options: RegistrarOptions,
                 nonces: Nonces, limited_log: RateLimitedLog | None = None) -> None:
        self.redis = redis
        self.keys = Keys(tenant)
        self._store: Store | None = None   # made at the first REGISTER (its scripts are registered then)
        self.edge_id = edge_id
        self.options = options
        self.nonces = nonces
        self.counts = NonceCounts()
        self.failures = FailureLimiter(options.failures_per_minute)
        self.limited_log = limited_log or RateLimitedLog()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.redis, self.keys.tenant)
        return self._store

    # -- REGISTER -----------------------------------------------------------------------------
    def submit(self, request: RegisterRequest, reply: Callable[[Reply], None]) -> None:
        """Asyncio thread: verify and apply `request` in a task of its own; `reply` answers it."""
        if len(self._tasks) >= MAX_IN_FLIGHT:
            reply(self._refuse("busy", request, BUSY))
            return
        task = asyncio.get_running_loop().create_task(self._answer(request, reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, request: RegisterRequest, reply: Callable[[Reply], None]) -> None:
        try:
            answer = await asyncio.wait_for(self.handle(request), REDIS_TIMEOUT_S)
        except (TimeoutError, *REDIS_DOWN) as exc:
            self.limited_log.emit("warning", "sip.register_failed", "redis", error=repr(exc))
            answer = BUSY
        except Exception:
            log.exception("sip.register_failed", agent_id=request.agent_id)
            answer = Reply(500, "Server Internal Error")
        try:
            reply(answer)
        except Exception:   # the SIP stack stopped meanwhile: the phone retries elsewhere
            log.info("sip.register_unanswered", agent_id=request.agent_id, reason="stack_stopped")

    def _refuse(self, cause: str, request: RegisterRequest, answer: Reply) -> Reply:
        self.limited_log.emit("info", "sip.register_refused", cause, reason=cause, source=request.source[0],
                              agent_id=request.agent_id, code=answer.code)
        return answer

    def _failed(self, cause: str, request: RegisterRequest) -> Reply:
        self.failures.failed(f"src:{request.source[0]}")
        self.failures.failed(f"aor:{request.agent_id}")
        return self._refuse(cause, request, FORBIDDEN)

    async def handle(self, request: RegisterRequest) -> Reply:
        """The answer to one REGISTER that carries credentials."""
        for key in (f"src:{request.source[0]}", f"aor:{request.agent_id}"):
            wait_s = self.failures.retry_after(key)
            if wait_s is not None:
                return self._refuse("too_many_failures", request,
                                    Reply(503, "Service Unavailable", (("retry-after", str(wait_s)),)))
        creds = parse_authorization(request.authorization)
        if creds is None or creds.realm != self.options.realm or creds.algorithm not in self.options.algorithms:
            self.failures.failed(f"src:{request.source[0]}")
            return self._refuse("bad_credentials", request, challenge_reply(self.options, self.nonces))
        ha1 = await self.redis.hget(self.keys.sip_auth(request.agent_id), HA1_FIELD[creds.algorithm])
        authentic = self._authentic(creds, request, ha1)
        if self.nonces.check(creds.nonce) != "ok":
            # too old, or not this secret's (another edge's, a restarted one's): a phone that knew the
            # password for it gets stale=true (it retries at once, without asking its user; RFC 7616
            # 3.3); any other gets a fresh challenge, counted against its source
            if not authentic:
                self.failures.failed(f"src:{request.source[0]}")
                return self._refuse("bad_nonce", request, challenge_reply(self.options, self.nonces))
            return challenge_reply(self.options, self.nonces, stale=True)
        if not authentic:
            return self._failed("wrong_credentials", request)
        if not self.counts.fresh(creds.nonce, creds.nc):
            return self._refuse("nonce_replayed", request,
                                challenge_reply(self.options, self.nonces, stale=True))
        return await self._bind(request)

    @staticmethod
    def _authentic(creds: Credentials, request: RegisterRequest, ha1: Any) -> bool:
        text = ha1.decode() if isinstance(ha1, bytes) else ha1
        # an unknown agent (no HA1) costs the same as a wrong password, and answers the same
        matches = response_matches(creds, text, request.method)
        return matches and creds.username == request.agent_id

    async def _bind(self, request: RegisterRequest) -> Reply:
        now = int(time.time() * 1000)
        contacts = [(c.key, now + c.expires_s * 1000 if c.expires_s > 0 else 0,
                     binding_json(request, c.uri, c.q, c.instance, self.edge_id)) for c in request.contacts]
        res = await self.store.sip_register(
            request.agent_id, max_contacts=self.options.max_contacts,
            max_registrations=self.options.max_registrations, call_id=request.call_id, cseq=request.cseq,
            remove_all=request.remove_all, contacts=contacts, now=now)
        if res.rc is RC.NOT_FOUND:
            return self._failed("wrong_credentials", request)
        if res.rc is RC.INVALID and res.detail == "too_many_contacts":
            return self._refuse(res.detail, request, Reply(403, "Forbidden - Too Many Contacts"))
        if res.rc is RC.INVALID:
            return self._refuse(res.detail, request, Reply(503, "Service Unavailable", (
                ("retry-after", str(TOO_MANY_REGISTRATIONS_RETRY_S)),)))
        if res.rc is not RC.OK:
            log.warning("sip.register_failed", agent_id=request.agent_id, rc=res.rc.name, detail=res.detail)
            return Reply(500, "Server Internal Error")
        headers = []
        for raw, expiry_ms in json.loads(res.detail):
            binding = binding_of(raw, expiry_ms)
            value = f"<{binding.uri}>;expires={max(0, (binding.expiry_ms - now) // 1000)}"
            if binding.q != 1.0:
                value += f";q={binding.q:g}"
            if binding.instance:
                value += f';+sip.instance="{binding.instance}"'
            headers.append(("contact", value))
        log.debug("sip.registered", agent_id=request.agent_id, contacts=len(headers), source=request.source[0])
        return Reply(200, "OK", tuple(headers))

    # -- ringing ------------------------------------------------------------------------------
    def may_be_aor(self, agent_id: str, uri: str) -> bool:
        """Whether `uri` looks like `agent_id`'s AOR: user = the agent id, host one of the registrar's
        domains (with none configured: any host name that is not an IP address)."""
        match = _URI.match(uri.strip().removeprefix("<").removesuffix(">"))
        if match is None or match.group(2) != agent_id:
            return False
        host = match.group(3).lower()
        return host in self.options.domains if self.options.domains else _ip(host) is None

    async def bindings(self, agent_id: str) -> list[Binding] | None:
        """The live bindings of an agent's AOR, best first (q, then the latest); None when the agent
        has no SIP credentials (its URI is not an AOR of ours)."""
        now = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(self.keys.sip_auth(agent_id))
            pipe.zrangebyscore(self.keys.aor(agent_id), f"({now}", "+inf", withscores=True)
            pipe.hgetall(self.keys.aor_bindings(agent_id))
            has_auth, live, raw = await pipe.execute()
        if not has_auth:
            return None
        found = []
        for key, expiry in live:
            text = raw.get(key)
            if text is not None:
                found.append(binding_of(text.decode() if isinstance(text, bytes) else text, int(expiry)))
        return sorted(found, key=lambda b: (-b.q, -b.expiry_ms))
