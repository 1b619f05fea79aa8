"""An ended dialog's last 32 s in a small record: the UA that answers its late requests.

Reads: an ended sippy UA (Disconnected or Failed state): its Call-ID, tags, branch, remote CSeq, the
hosts its requests may come from (`transport.dialog_peer_hosts`). Writes: the transaction manager's
consumer of that Call-ID and the ended state's `ua` now name a new UA object that holds only those
(`ENDED_DIALOG_KEEPS`); the ended UA itself is then held by nobody of sippy's and is freed.

Why: sippy keeps an ended dialog for `godead_timeout` (32 s) so that a late request in it is matched
and answered (Disconnected: 200 to a BYE, 500 to the rest; Failed: our answers, `patches.py`), and
the whole UA stays with it: From and To as parsed trees, the remote target, both next hops, four
timestamps, the UA's dict of ~50 attributes, ~5.3 KB. A call that went through the 1 s welcome
message carries its welcome leg like this for its first 33 s. What a late request is matched and
answered with is a few strings: `UA.isYours` reads the Call-ID and the two tags (and the INVITE's
branch for a UAS), `UA.recvRequest` the remote CSeq, our Server header and the config, the ended
state's `recvRequest` nothing else. The record is a `UA` instance built without `UA.__init__`, so
that sippy's own `recvRequest`, `isYours` and `changeState` (to Dead, which unregisters it) run on it
as they ran on the UA: nothing sippy does with a late request is written again here.

Runs on the SIP thread (from `memory.forget_ended_dialog`, a reactor turn after the dialog ended).
"""

from __future__ import annotations

from typing import Any

from sippy.UA import UA

from callcenter_sip_edge.sippy.transport import dialog_peer_hosts

# what the record keeps of the UA, when the UA has it in its own dict (the rest reads as sippy's class
# defaults: no timers, no transaction, no callbacks, `rAddr`/`rTarget` None)
ENDED_DIALOG_KEEPS = ("global_config", "branch", "rCSeq", "local_ua", "remote_ua", "compact_sip", "uas_lossemul",
                      "godead_timeout")
# `UA.emitPendingEvents` reads the length of `equeue` (an ended state queues no event), UaStateDead
# runs `dead_cbs` (a UA with any is not replaced)
_NO_EVENTS: tuple[Any, ...] = ()


class DialogTag:
    """What an ended dialog's From or To is still asked (`UA.isYours`): its tag."""

    __slots__ = ("tag",)

    def __init__(self, tag: str | None) -> None:
        self.tag = tag

    def getTag(self) -> str | None:   # sippy's name for it
        return self.tag


def ended_record(ua: Any) -> Any | None:
    """A record answering in `ua`'s place for the rest of its ended state, registered in its place
    with the transaction manager; None (nothing changed) when `ua` is not the registered consumer of
    its Call-ID or something waits for its death (`dead_cbs`: handed the UA itself)."""
    if ua.cId is None or ua.dead_cbs or ua.state is None or ua.state.ua is not ua:
        return None
    call_id = str(ua.cId)
    consumer = next((c for c in ua.global_config["_sip_tm"].req_consumers.get(call_id, ()) if c.cobj is ua), None)
    if consumer is None:
        return None
    record = UA.__new__(UA)
    fields = vars(ua)
    for name in ENDED_DIALOG_KEEPS:
        if name in fields:
            setattr(record, name, fields[name])
    record.cId = call_id   # read only through str() once ended (isYours, UaStateDead)
    record.lUri = None if ua.lUri is None else DialogTag(ua.lUri.getTag())
    record.rUri = None if ua.rUri is None else DialogTag(ua.rUri.getTag())
    record.cc_peer_hosts = tuple(sorted(dialog_peer_hosts(ua)))
    record.equeue = record.dead_cbs = _NO_EVENTS
    record.state = ua.state
    ua.state.ua = record       # its goDead timer now ends the record
    consumer.cobj = record
    ua.cc_ended_record = record   # `registered`: who to unregister if the UA is still asked to forget it
    return record


def registered(ua: Any) -> Any:
    """The object the transaction manager holds for `ua`'s dialog: `ua`, or its ended record."""
    return getattr(ua, "cc_ended_record", ua)
