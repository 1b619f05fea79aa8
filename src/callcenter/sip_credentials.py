"""SIP digest credentials of agents: what is kept of a SIP password (RFC 3261 22.4, RFC 8760).

Reads: nothing. Writes: nothing. The api hashes a password once per algorithm into HA1 =
H(username ":" realm ":" password); only the HA1s are stored (`cc:{t}:sipauth:<agent>` and the
agent's SQL row), so neither the api nor the edge ever holds the password after the request that
set it. The sip-edge verifies a REGISTER's digest with the HA1 of the algorithm it answered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

# RFC 8760 names, in the order a challenge offers them (the strongest first: a client takes the
# first one it supports)
ALGORITHMS: dict[str, Callable[[bytes], str]] = {
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
    "MD5": lambda data: hashlib.md5(data, usedforsecurity=False).hexdigest(),
}
# the field of each algorithm's HA1 in the credentials hash
HA1_FIELD = {"SHA-256": "ha1_sha256", "MD5": "ha1_md5"}


def digest_hash(algorithm: str, text: str) -> str:
    """H(text) of `algorithm` (RFC 8760 names), hex."""
    return ALGORITHMS[algorithm](text.encode("utf-8"))


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    return digest_hash(algorithm, f"{username}:{realm}:{password}")


def credentials(username: str, realm: str, password: str) -> dict[str, str]:
    """The fields stored for one agent: the realm and an HA1 per algorithm (never the password)."""
    record = {"realm": realm}
    for algorithm, field in HA1_FIELD.items():
        record[field] = ha1(algorithm, username, realm, password)
    return record
