"""Admission of new INVITEs by source address: an allow-list of trusted networks, a per-source
rate limit and a limit over all sources (token buckets), and the networks that may set a caller's
priority. Pure Python, used in sippy's turns before a call is created.

Reads: nothing but its arguments. Writes: nothing (the buckets live in memory, one per source IP,
bounded in number, and one for all sources).

Time is the datagram's arrival (the kernel's receive timestamp, see `sippy/transport.py`), passed
as `at`; without it the guard's clock. Why: counted when read, a burst that waited in the socket
buffer while the reactor was busy was spread over the time it took to read it, and refilled
tokens let more of it in than the rate allows.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# the table of buckets is pruned of full (idle) buckets when it grows past this
MAX_TRACKED_SOURCES = 10_000


def parse_networks(spec: str | Iterable[str]) -> tuple[Network, ...]:
    """`"10.0.0.0/8, 192.0.2.7, ::1"` -> networks (a bare address is a /32 or /128); raises ValueError."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    networks = tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items if item.strip())
    if not networks:
        raise ValueError("no trusted network given (use 0.0.0.0/0,::/0 to trust every source)")
    return networks


class Networks:
    """A set of networks to test addresses against; `"*"`-like specs (0.0.0.0/0 and ::/0) match all.
    An empty spec matches nothing (only where `allow_empty`)."""

    def __init__(self, spec: str | Iterable[str], *, allow_empty: bool = False) -> None:
        empty = not (spec.strip(" ,") if isinstance(spec, str) else [s for s in spec if s.strip()])
        self.networks: tuple[Network, ...] = () if empty and allow_empty else parse_networks(spec)
        self.everything = {str(n) for n in self.networks} >= {"0.0.0.0/0", "::/0"}
        # the answer per source address, remembered (a few peers send most calls; parsing the
        # address and testing each network was ~1 % of the edge per INVITE); bounded for many sources
        self._contains = functools.lru_cache(maxsize=4096)(self._lookup)

    def __contains__(self, source_ip: str) -> bool:
        if self.everything:
            return True
        if not self.networks:
            return False
        return self._contains(source_ip)

    def _lookup(self, source_ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(source_ip.strip("[]"))
        except ValueError:
            return False
        mapped = getattr(addr, "ipv4_mapped", None)
        return any(addr in net or (mapped is not None and mapped in net) for net in self.networks)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A SIP answer to a refused INVITE: status code, reason phrase, optional Retry-After."""

    code: int
    phrase: str
    retry_after_s: int | None = None
    reason: str = ""


FORBIDDEN = Refusal(403, "Forbidden", None, "untrusted_source")


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class SourceGuard:
    """Decides whether a new INVITE from `source_ip` may create a call.

    - a source outside every trusted network: 403 Forbidden;
    - more than `burst` INVITEs at once, or more than `rate` per second sustained, from one IP, or
      more than `total_burst` / `total_rate` from all sources together: 503 Service Unavailable with
      Retry-After (the time until a token is back, at least 1 s).
    `rate` (`total_rate`) <= 0 turns that limit off. `priority`: the networks whose INVITEs may
    carry the caller's priority (empty: none).
    """

    def __init__(self, trusted: str | Iterable[str] = "0.0.0.0/0,::/0", rate: float = 0.0, burst: int = 1,
                 clock: Callable[[], float] = time.monotonic, *, total_rate: float = 0.0, total_burst: int = 1,
                 priority: str | Iterable[str] = "") -> None:
        self.trusted_networks = Networks(trusted)
        self.networks = self.trusted_networks.networks
        self.priority_networks = Networks(priority, allow_empty=True)
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self.total_rate = float(total_rate)
        self.total_burst = max(1, int(total_burst))
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._total: _Bucket | None = None
        self.refused = {"untrusted_source": 0, "rate_limited": 0, "total_rate_limited": 0}

    def trusted(self, source_ip: str) -> bool:
        return source_ip in self.trusted_networks

    def may_set_priority(self, source_ip: str) -> bool:
        return source_ip in self.priority_networks

    def check(self, source_ip: str, closed: Refusal | None = None, at: float | None = None) -> Refusal | None:
        """None: admit the INVITE (and take its tokens); else why not. `closed`: the edge takes no
        new call now (it drains), so a trusted source gets that refusal and keeps its tokens.
        `at`: when the INVITE arrived (monotonic seconds); default now."""
        if not self.trusted(source_ip):
            self.refused["untrusted_source"] += 1
            return FORBIDDEN
        if closed is not None:
            return closed
        return self.take_token(source_ip, at)

    def take_token(self, source_ip: str, at: float | None = None) -> Refusal | None:
        """The rate limits alone: None if the source and the whole edge have a token left (taken)."""
        now = self._clock() if at is None else at
        source_bucket: _Bucket | None = None
        if self.rate > 0:
            source_bucket = self._buckets.get(source_ip)
            if source_bucket is None:
                if len(self._buckets) >= MAX_TRACKED_SOURCES:
                    self._prune(now)
                source_bucket = self._buckets[source_ip] = _Bucket(float(self.burst), now)
            wait_s = _take(source_bucket, now, self.rate, self.burst)
            if wait_s is not None:
                self.refused["rate_limited"] += 1
                return Refusal(503, "Service Unavailable", wait_s, "rate_limited")
        if self.total_rate > 0:
            if self._total is None:
                self._total = _Bucket(float(self.total_burst), now)
            wait_s = _take(self._total, now, self.total_rate, self.total_burst)
            if wait_s is not None:
                if source_bucket is not None:
                    source_bucket.tokens += 1.0   # not this source's fault: give its token back
                self.refused["total_rate_limited"] += 1
                return Refusal(503, "Service Unavailable", wait_s, "total_rate_limited")
        return None

    def _prune(self, now: float) -> None:
        """Forget the buckets that have refilled (their sources are idle); if none has, the oldest half."""
        full_after = self.burst / self.rate
        idle = [ip for ip, b in self._buckets.items() if now - b.stamp >= full_after]
        if not idle:
            idle = sorted(self._buckets, key=lambda ip: self._buckets[ip].stamp)[: len(self._buckets) // 2]
        for ip in idle:
            del self._buckets[ip]

    def tracked_sources(self) -> int:
        return len(self._buckets)


def _take(bucket: _Bucket, now: float, rate: float, burst: int) -> int | None:
    """Refill `bucket` up to `now` and take a token: None, or the seconds until one is back. A
    time before the bucket's last one (datagrams read out of arrival order) refills nothing."""
    if now > bucket.stamp:
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
    if bucket.tokens >= 1.0:
        bucket.tokens -= 1.0
        return None
    return max(1, math.ceil((1.0 - bucket.tokens) / rate))
