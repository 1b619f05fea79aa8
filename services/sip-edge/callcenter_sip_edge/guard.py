"""Admission of new INVITEs by source address: an allow-list of trusted networks and a per-source
rate limit (token bucket). Pure Python, used on the SIP thread before a call is created.

Reads: nothing but its arguments. Writes: nothing (the buckets live in memory, one per source IP,
bounded in number).
"""

from __future__ import annotations

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
    - more than `burst` INVITEs at once, or more than `rate` per second sustained, from one IP:
      503 Service Unavailable with Retry-After (the time until a token is back, at least 1 s).
    `rate` <= 0 turns the rate limit off.
    """

    def __init__(self, trusted: str | Iterable[str] = "0.0.0.0/0,::/0", rate: float = 0.0, burst: int = 1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.networks = parse_networks(trusted)
        self._trust_all = {str(n) for n in self.networks} >= {"0.0.0.0/0", "::/0"}
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self.refused = {"untrusted_source": 0, "rate_limited": 0}

    def trusted(self, source_ip: str) -> bool:
        if self._trust_all:
            return True
        try:
            addr = ipaddress.ip_address(source_ip.strip("[]"))
        except ValueError:
            return False
        mapped = getattr(addr, "ipv4_mapped", None)
        return any(addr in net or (mapped is not None and mapped in net) for net in self.networks)

    def check(self, source_ip: str, closed: Refusal | None = None) -> Refusal | None:
        """None: admit the INVITE (and take a token); else why not. `closed`: the edge takes no
        new call now (it drains), so a trusted source gets that refusal and keeps its tokens."""
        if not self.trusted(source_ip):
            self.refused["untrusted_source"] += 1
            return FORBIDDEN
        if closed is not None:
            return closed
        return self.take_token(source_ip)

    def take_token(self, source_ip: str) -> Refusal | None:
        """The rate limit alone: None if the source has a token left (it is taken)."""
        if self.rate <= 0:
            return None
        now = self._clock()
        bucket = self._buckets.get(source_ip)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_SOURCES:
                self._prune(now)
            bucket = self._buckets[source_ip] = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        self.refused["rate_limited"] += 1
        wait_s = max(1, math.ceil((1.0 - bucket.tokens) / self.rate))
        return Refusal(503, "Service Unavailable", wait_s, "rate_limited")

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
