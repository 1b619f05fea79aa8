"""Answering an out-of-dialog request later, from another piece of work than its callback.

Reads: the server transaction sippy gave the request callback. Writes: a response through sippy's
transaction manager (retransmitted to a retransmitted request as any response is).

Knows sippy's private names (`_sip_tm`, a transaction's `userv`).
"""

from __future__ import annotations

from typing import Any

# what the request callback returns to keep the server transaction open without answering yet
NO_ANSWER_YET = (None, None, None)


def arrival_transport(sip_t: Any) -> str:
    """`udp`, `tcp` or `tls`: what the request of this server transaction came by."""
    return str(getattr(getattr(sip_t, "userv", None), "transport", "udp") or "udp").lower()


def respond(sip_config: Any, resp: Any, sip_t: Any) -> None:
    """Send the final response of a transaction whose callback answered NO_ANSWER_YET."""
    sip_config["_sip_tm"].sendResponse(resp, sip_t)
