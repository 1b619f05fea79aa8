"""The 100 Trying of an INVITE, sent only when no other response has gone out by the end of the
reactor's turn.

Reads: the responses the transaction manager is asked to send. Writes: the held 100s, at the end of
the turn (a zero-delay sippy timer, which the reactor runs after the batch of datagrams it reads).

Why: sippy sends 100 Trying the moment an INVITE reaches a dialog, and the edge answers every new
INVITE with 180 Ringing in the same turn (the caller hears ringback until a leg answers), so each
call cost one more datagram built, sent and read by the caller than needed: 1 of the ~21 the edge
sends and receives per call. RFC 3261 17.2.1 asks for the 100 only if the TU will not send a
provisional response within 200 ms; its purpose (stop the INVITE's retransmissions) is served as
well by the 180, or by a final response. The 100 is still sent when nothing else was by the end of
the turn (an INVITE relayed as a re-INVITE and answered later, an INVITE the router waits on), so
a slow answer never leaves the INVITE without its 100 longer than one batch of datagrams. A held
100 is rendered when it goes: sippy has put our tag in its To by then (RFC 3261 8.2.6.2: a tag MAY
be present in a 100).

Knows sippy's private names (the server transaction's state and `tserver`); nothing outside
`callcenter_sip_edge.sippy` does.
"""

from __future__ import annotations

from typing import Any


class HeldTrying:
    """The 100s held in this turn: `hold` one instead of sending it, `forget` it when its transaction
    answers otherwise; at the turn's end the rest are sent with `send(resp, t, lossemul)`."""

    def __init__(self) -> None:
        self._held: dict[int, tuple[Any, Any, int]] = {}   # id(transaction) -> (resp, transaction, lossemul)
        self._timer: Any = None

    def hold(self, resp: Any, t: Any, lossemul: int, send: Any) -> None:
        from sippy.Time.Timeout import Timeout

        self._held[id(t)] = (resp, t, lossemul)
        if self._timer is None:
            self._timer = Timeout(self._flush, 0, 1, send)

    def forget(self, t: Any) -> None:
        self._held.pop(id(t), None)

    def _flush(self, send: Any) -> None:
        from sippy.SipTransactionManager import TRYING

        self._timer = None
        held, self._held = self._held, {}
        for resp, t, lossemul in held.values():
            if t.state == TRYING:   # nothing else answered the INVITE in this turn
                send(resp, t, lossemul=lossemul)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._held.clear()


def is_held_trying(resp: Any, t: Any, retrans: bool) -> bool:
    """True for a first 100 Trying to an INVITE whose server transaction has sent nothing yet."""
    from sippy.SipTransactionManager import TRYING

    return (not retrans and t is not None and t.state == TRYING and getattr(t, "method", None) == "INVITE"
            and resp.scode == 100)
