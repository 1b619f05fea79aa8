"""What the edge reads in a caller's SDP: the media type of the call (audio or chat).

Reads: the text of an SDP body (or None for an INVITE without one). Writes: nothing. Pure Python,
no sippy, so it can be tested on its own.

The rule is the reference's (OpenSIPS call_center, cc_handle_call): only the transport protocol of
the first media stream counts. It contains "RTP" (RTP/AVP, RTP/SAVP, UDP/TLS/RTP/SAVPF, ...): audio;
it contains "MSRP" (TCP/MSRP, TCP/TLS/MSRP): chat; anything else (T.38 over udptl, a body that
is not SDP, an SDP without media): not a call the call center takes.
"""

from __future__ import annotations

import re

AUDIO = "audio"
CHAT = "chat"

# "m=<media> <port>[/<count>] <proto> <fmt> ..." (RFC 4566 5.14)
_MEDIA_LINE = re.compile(r"^m=(\S+)\s+(\S+)\s+(\S+)", re.MULTILINE)


def first_media_proto(sdp: str) -> str | None:
    """The transport protocol of the first m= line, e.g. "RTP/AVP" or "TCP/MSRP"; None if there is none."""
    match = _MEDIA_LINE.search(sdp.replace("\r\n", "\n"))
    return match.group(3) if match else None


def media_type_of(sdp: str | None) -> str | None:
    """`audio`, `chat`, or None when the call center cannot take the call (answer 488).

    An INVITE without SDP (late offer) counts as audio (the reference refuses it unless its script
    names the media).
    """
    if sdp is None:
        return AUDIO
    proto = first_media_proto(sdp)
    if proto is None:
        return None
    proto = proto.upper()
    if "RTP" in proto:
        return AUDIO
    if "MSRP" in proto:
        return CHAT
    return None
