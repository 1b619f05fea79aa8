"""The legs of a call as data: the caller's facts, media legs, agent legs and their `Phase`.

Reads: nothing. Writes: nothing. Also the URI helper every leg that sends an INVITE uses
(`parse_target_uri`) and the timeouts those INVITEs get.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from sippy.SipURL import SipURL

log = structlog.get_logger(__name__)



class SdpBody(Protocol):
    """sippy's MsgBody as the call logic holds it: passed on and copied, never read."""

    def getCopy(self) -> SdpBody: ...


class SipUA(Protocol):
    """A sippy UA as the call logic holds it: compared by identity, given events through
    `sip_events`, detached by dropping its event callback."""

    event_cb: Callable[[Any, Any], None] | None

    def recvEvent(self, event: object) -> None: ...


class Timer(Protocol):
    """sippy's Timeout, as far as a leg keeps one."""

    def cancel(self) -> None: ...

# A leg that has not sent any response within this time is unreachable (sippy's own 408 comes
# only after 32 s of retransmissions).
NO_REPLY_TIMEOUT_S = 4.0
# A media server must answer within this time once it has sent a provisional response.
MEDIA_SETUP_TIMEOUT_S = 15.0
# The caller must ACK our 200 within this time, else the call ends (`caller_no_ack`). A 200 is
# retransmitted after 0.5, 1 and 2 s: this covers three lost 200s or ACKs. sippy would wait 32 s.
CALLER_ACK_TIMEOUT_S = 6.0
# The caller must answer a re-INVITE that moves it to another leg (an agent that answered waits)
# within this time, else the call ends (`caller_reinvite_timeout`). sippy would wait 32 s.
CALLER_REINVITE_TIMEOUT_S = 5.0


class Phase(enum.StrEnum):
    """Where an agent leg is. Without a flow-id message: RINGING -> BRIDGING (200 received, the
    caller is being re-INVITEd) -> TALKING. With one: RINGING -> WHISPER_SETUP (the message is
    INVITEd with the agent's offer) -> WHISPER (the agent hears it) -> REBRIDGING (the agent is
    re-INVITEd without SDP) -> BRIDGING -> TALKING."""

    RINGING = "ringing"
    WHISPER_SETUP = "whisper_setup"
    WHISPER = "whisper"
    REBRIDGING = "rebridging"
    BRIDGING = "bridging"
    TALKING = "talking"


# an agent leg the dispatcher may still take back: the caller has not been moved to it
CANCELLABLE_PHASES = frozenset({Phase.RINGING, Phase.WHISPER_SETUP, Phase.WHISPER, Phase.REBRIDGING})


@dataclass
class CallerInfo:
    """Who called which flow: what the edge read from the caller's INVITE."""

    flow: str
    caller_user: str
    caller_uri: str
    caller_display: str | None
    sip_call_id: str
    source: str
    priority: int | None = None
    media_type: str = "audio"


@dataclass
class MediaLeg:
    """A leg to a media server (welcome, queue or dissuading) and the purpose it serves."""

    ua: SipUA | None           # None until its INVITE is sent
    uri: str
    purpose: str
    early_offer: bool          # carries the caller's offer (caller not answered yet)


@dataclass
class AgentLeg:
    """A leg to one agent's phone for one offer, with its phase and ring timer."""

    ua: SipUA | None           # None until its INVITE is sent
    uri: str
    offer_id: str
    agent_id: str
    early_offer: bool
    phase: Phase = Phase.RINGING
    got_provisional: bool = False
    ring_timer: Timer | None = None
    whisper_uri: str | None = None     # the flow-id message to play once the agent answers
    whisper: MediaLeg | None = None    # its leg (the agent is its only peer)
    whispered: bool = False            # the agent answered and a message was tried
    agent_offer: SdpBody | None = None  # the agent's answer-time offer, while the message is set up
    offer_requested: bool = False      # a re-INVITE without SDP to the agent is outstanding
    retry_timer: Timer | None = None
    retries: int = 0

    def stop_timers(self) -> None:
        """Stop the ring timeout and a pending re-INVITE retry."""
        cancel_timers(self, "ring_timer", "retry_timer")


def cancel_timers(owner: object, *names: str) -> None:
    """Cancel the timers `owner` holds in the attributes `names`, and forget them."""
    for name in names:
        timer = getattr(owner, name)
        if timer is not None:
            timer.cancel()
            setattr(owner, name, None)


def parse_target_uri(uri: str) -> Any:
    """Parse a command's SIP URI (user, host, port and URI parameters); None if unusable (a transport
    other than UDP, TCP, TLS, WS or WSS: whether this edge listens on it is checked when it is sent)."""
    try:
        target = SipURL(uri.strip().removeprefix("<").removesuffix(">"))
    except Exception:
        log.warning("call.bad_uri", uri=uri)
        return None
    if target.transport is not None and str(target.transport).lower() not in ("udp", "tcp", "tls", "ws", "wss"):
        log.warning("call.unsupported_transport", uri=uri)
        return None
    if not target.host:
        return None
    return target
