"""The spelling of every SIP header name the edge writes: the one the RFC that defines it uses.

Reads: nothing. Writes: nothing; `canonical(name)` is applied to every header name sippy writes by
`patches._rfc_header_spelling`.

Why: header names are case-insensitive (RFC 3261 7.3.1), but sippy writes the names it has no
class for, and a few it has, with `str.capitalize()` (`Www-authenticate`, `Min-expires`,
`Session-expires`, `Min-se`), and peers that match names case-sensitively (SIPp's `[last_X:]`
and regexp checks, some SBCs' header manipulation rules) miss them. One table, the RFCs' spelling,
keyed by the lower-case name; a name not in it is written with each dash-separated word
capitalised (`X-Cc-Flow`); a compact form (one letter) is left as it is.
"""

from __future__ import annotations

_SPELLINGS = (
    # RFC 3261 section 20
    "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Authentication-Info",
    "Authorization", "Call-ID", "Call-Info", "Contact", "Content-Disposition", "Content-Encoding",
    "Content-Language", "Content-Length", "Content-Type", "CSeq", "Date", "Error-Info", "Expires",
    "From", "In-Reply-To", "Max-Forwards", "MIME-Version", "Min-Expires", "Organization", "Priority",
    "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "Record-Route", "Reply-To", "Require",
    "Retry-After", "Route", "Server", "Subject", "Supported", "Timestamp", "To", "Unsupported",
    "User-Agent", "Via", "Warning", "WWW-Authenticate",
    # RFC 4028 (session timers), 3327 (Path), 3262 (RSeq, RAck), 3326 (Reason), 3325 and 3323
    "Session-Expires", "Min-SE", "Path", "RSeq", "RAck", "Reason", "P-Asserted-Identity",
    "P-Preferred-Identity", "Privacy",
    # RFC 3515, 3892, 3891 (transfer), 6665 (events), 3608, 5626, 3329, 5806, 3841, 7044, 6086
    "Refer-To", "Referred-By", "Replaces", "Event", "Allow-Events", "Subscription-State", "Service-Route",
    "Flow-Timer", "Security-Client", "Security-Server", "Security-Verify", "Diversion", "Accept-Contact",
    "Reject-Contact", "Request-Disposition", "History-Info", "Info-Package", "Recv-Info",
    # RFC 4538, 4488, 8224, 3313, 3455
    "Target-Dialog", "Refer-Sub", "Identity", "P-Media-Authorization", "P-Access-Network-Info",
    "P-Charging-Vector", "P-Called-Party-ID", "P-Visited-Network-ID", "P-Associated-URI",
)

SPELLING: dict[str, str] = {name.lower(): name for name in _SPELLINGS}


def canonical(name: str) -> str:
    """`name` as the defining RFC spells it (any case in), or capitalised word by word if unknown."""
    if len(name) <= 1:
        return name   # a compact form (RFC 3261 7.3.3): `v`, `f`, `x`...
    known = SPELLING.get(name.lower())
    if known is not None:
        return known
    return "-".join(word[:1].upper() + word[1:].lower() for word in name.split("-"))
