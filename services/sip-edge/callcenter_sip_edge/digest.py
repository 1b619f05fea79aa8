"""Digest authentication of REGISTERs (RFC 3261 22, RFC 7616's nonce advice, RFC 8760 SHA-256).

Reads: an Authorization header's text, the agent's HA1s (from `callcenter.sip_credentials`).
Writes: WWW-Authenticate challenges. No state: a nonce is `<ms>.<random>.<hmac>` (the HMAC of its time
and random part with the edge's secret), so any edge with the same secret verifies it without having issued it; an old
one is refused with `stale=true`, and the client answers the new challenge without asking its user
again. Replays within a nonce's life are caught by `NonceCounts` (the last nc seen per nonce, kept
while the nonce lives, bounded). Every comparison of a secret value is in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from callcenter.sip_credentials import ALGORITHMS, digest_hash

# name=value pairs of a credentials header; the value quoted (with \\ escapes) or a token
_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)\s*,?')
MAX_HEADER_CHARS = 4096
NONCES_TRACKED = 100_000


@dataclass(frozen=True)
class Credentials:
    """The digest fields of one Authorization header that this edge needs."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str
    qop: str | None
    nc: str | None
    cnonce: str | None


def parse_authorization(header: str) -> Credentials | None:
    """The Digest credentials of an Authorization header's value; None if it is not one we can check
    (another scheme, a missing field, an algorithm we do not offer, qop other than auth)."""
    if len(header) > MAX_HEADER_CHARS:
        return None
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params: dict[str, str] = {}
    for match in _PARAM.finditer(rest):
        value = match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[match.group(1).lower()] = value
    algorithm = params.get("algorithm", "MD5").upper()
    if algorithm not in ALGORITHMS:
        return None
    qop = params.get("qop")
    if qop is not None and qop.lower() != "auth":
        return None
    try:
        creds = Credentials(username=params["username"], realm=params["realm"], nonce=params["nonce"],
                            uri=params["uri"], response=params["response"].lower(), algorithm=algorithm,
                            qop=qop.lower() if qop else None, nc=params.get("nc"), cnonce=params.get("cnonce"))
    except KeyError:
        return None
    if creds.qop is not None and (creds.nc is None or creds.cnonce is None or not re.fullmatch(r"[0-9a-fA-F]{8}",
                                                                                                   creds.nc)):
        return None
    return creds


class Nonces:
    """Stateless nonces: issued with the time, verified by HMAC, stale after `ttl_s`."""

    def __init__(self, secret: bytes | None, ttl_s: float) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self.ttl_s = ttl_s

    def _mac(self, stamp: str) -> str:
        return hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self, now: float | None = None) -> str:
        # the time and a random part: two challenges of one millisecond differ (their nc count apart)
        stamp = f"{int((time.time() if now is None else now) * 1000)}.{secrets.token_hex(6)}"
        return f"{stamp}.{self._mac(stamp)}"

    def check(self, nonce: str, now: float | None = None) -> str:
        """'ok', 'stale' (ours, but too old) or 'bad' (not ours)."""
        stamp, _, mac = nonce.rpartition(".")
        millis = stamp.partition(".")[0]
        if not millis.isdigit() or len(stamp) > 40 or not hmac.compare_digest(mac.encode(), self._mac(stamp).encode()):
            return "bad"
        age_s = (time.time() if now is None else now) - int(millis) / 1000
        return "ok" if -5 <= age_s <= self.ttl_s else "stale"


class NonceCounts:
    """The highest nc seen per nonce (RFC 7616 3.4: a request with an nc not above it is a replay);
    the oldest nonces are forgotten first, and a forgotten one only loses the replay check."""

    def __init__(self, capacity: int = NONCES_TRACKED) -> None:
        self._last: OrderedDict[str, int] = OrderedDict()
        self._capacity = capacity

    def fresh(self, nonce: str, nc: str | None) -> bool:
        count = int(nc, 16) if nc else 0
        last = self._last.get(nonce)
        if last is not None and count <= last:
            return False
        self._last[nonce] = count
        self._last.move_to_end(nonce)
        while len(self._last) > self._capacity:
            self._last.popitem(last=False)
        return True


def challenge(realm: str, nonce: str, algorithms: tuple[str, ...] = tuple(ALGORITHMS), *,
              stale: bool = False) -> list[str]:
    """WWW-Authenticate values, one per algorithm in order of preference (RFC 8760 2.4)."""
    tail = ", stale=true" if stale else ""
    return [f'Digest realm="{realm}", nonce="{nonce}", algorithm={algorithm}, qop="auth"{tail}'
            for algorithm in algorithms]


def expected_response(creds: Credentials, ha1: str, method: str) -> str:
    """The response a client that knows the password sends (RFC 2617 3.2.2.1, RFC 8760)."""
    ha2 = digest_hash(creds.algorithm, f"{method}:{creds.uri}")
    if creds.qop == "auth":
        return digest_hash(creds.algorithm, f"{ha1}:{creds.nonce}:{creds.nc}:{creds.cnonce}:auth:{ha2}")
    return digest_hash(creds.algorithm, f"{ha1}:{creds.nonce}:{ha2}")


def response_matches(creds: Credentials, ha1: str | None, method: str) -> bool:
    """Whether the client knew the password; with no HA1 (unknown agent) a response is still computed
    and compared against a random one, so both cases take the same time."""
    expected = expected_response(creds, ha1 or secrets.token_hex(32), method)
    return hmac.compare_digest(expected.encode(), creds.response.encode()) and ha1 is not None
