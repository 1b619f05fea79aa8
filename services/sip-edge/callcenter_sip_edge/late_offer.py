"""A caller's late offer: its INVITE carries no SDP, so the first leg that answers it offers.

Reads: the offer in the 2xx of a leg INVITEd without SDP (a media server's or an agent's), and the
body of the caller's ACK (`Call.caller_ack_body`). Writes: our 200 to the caller carrying that
offer, and the leg's held ACK carrying the caller's answer (through `sip_events`).

Shape (RFC 3261 13.2.1 on the caller's side, RFC 3725 flow I's second half on the leg's side):
    caller --INVITE (no SDP)--> edge --INVITE (no SDP)--> leg
    caller <--200 (leg's offer)-- edge <--200 (offer)---- leg
    caller --ACK (answer)-----> edge --ACK (answer)-----> leg
Once the caller's dialog is confirmed the call goes on as any other: a later leg is INVITEd
without SDP and its offer goes to the caller in a re-INVITE. A caller whose ACK carries no answer
broke the offer/answer exchange: the call ends (`caller_no_sdp`), the leg gets its ACK and a BYE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from callcenter_sip_edge import sip_events
from callcenter_sip_edge.legs import SdpBody, SipUA

if TYPE_CHECKING:
    from callcenter_sip_edge.call import Call

log = structlog.get_logger(__name__)

NO_ANSWER_REASON = "caller_no_sdp"



def answer_caller_with_offer(call: Call, leg_ua: SipUA, offer: SdpBody, connected: Callable[[], None]) -> None:
    """Send the leg's `offer` in our 200 to the caller; when the caller's ACK brings its answer,
    ACK the leg's 200 with it and run `connected`. The leg's own ACK is held by sippy until then
    (`ua.pending_tr`); if the call ends first, `dialog.hang_up` sends it before the BYE."""

    def caller_acked() -> None:
        answer = call.caller_ack_body
        if answer is None:
            log.warning("call.late_offer_unanswered")
            call.caller_failed(NO_ANSWER_REASON)
            return
        sip_events.answer(leg_ua, answer)
        connected()

    log.info("call.late_offer_answered")
    call.answer_caller(offer, caller_acked)
