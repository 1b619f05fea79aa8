"""What sippy keeps per message, per transaction and per dialog, trimmed to what is still read.

Reads: the sippy package (imported lazily, from `patches.apply_patches`).
Writes: replaces a module global of sippy's transaction manager and wraps `SipTransaction.cleanup`,
the ended states' and the Connected state's `__init__` and the Connected state's handler of the
ACK of a held 2xx, once per process. Nothing here changes what goes on the wire: a retransmitted
request is still answered from the response cache for as long as before, a live transaction keeps
everything its timers use, and an ended dialog answers late requests through `ended_dialog` as its
UA did. Measured with `bench/edge_memory.py` (bench/README.md, "Issue 15: sip-edge memory per call"
and its second round).
"""

from __future__ import annotations

from typing import Any

_applied = False
# the fields sippy's SipTransaction.cleanup sets to None, which a trimmed finished transaction reads
# from the class (set by `apply_memory_patches`)
READ_AS_NONE_WHEN_FINISHED: list[str] = []


def apply_memory_patches() -> None:
    """Patch sippy 2.5.0 in place; idempotent. Call before any sippy object is created."""
    global _applied
    if _applied:
        return
    _one_entry_for_every_absorbed_message()
    _finished_transaction_forgets_its_messages()
    _ended_dialog_keeps_what_matches_it()
    _confirmed_dialog_in_a_smaller_dict()
    _applied = True


class CachedAnswer:
    """One entry of sippy's response cache (its `SipTMRetransmitO`, same fields) in a slotted object."""

    __slots__ = ("address", "call_id", "data", "lossemul", "userv")

    def __init__(self, userv: Any = None, data: Any = None, address: Any = None, call_id: Any = None,
                 lossemul: Any = None) -> None:
        self.userv = userv
        self.data = data
        self.address = address
        self.call_id = call_id
        self.lossemul = lossemul


# the entry of every message that is absorbed without an answer (data None); nobody writes to it
ABSORBED = CachedAnswer()


def cache_entry(userv: Any = None, data: Any = None, address: Any = None, call_id: Any = None,
                lossemul: Any = None) -> CachedAnswer:
    """What sippy stores under a received message's checksum for 32-64 s."""
    if data is None:
        return ABSORBED
    return CachedAnswer(userv, data, address, call_id, lossemul)


def _one_entry_for_every_absorbed_message() -> None:
    # Why: sippy remembers every datagram it received for 32-64 s (its checksum -> an entry) so that
    # a retransmission is absorbed or answered again with the response it got. For most messages
    # (ACKs, responses, requests answered by a transaction) the entry is an empty `SipTMRetransmitO()`,
    # a new object with its own attribute values each time: ~10 per call, ~110 bytes each. An entry
    # without data is only ever read for `data is None` (handleIncoming drops the datagram), so they
    # can all be one shared object; entries with a response to resend get a slotted object.
    import sippy.SipTransactionManager as stm

    stm.SipTMRetransmitO = cache_entry


def _finished_transaction_forgets_its_messages() -> None:
    # Why: `SipTransaction.cleanup()` runs when a transaction is over (removed from the transaction
    # manager: no timer of it is left), and sets its callbacks and timers to None but keeps every
    # attribute, the rendered message (`data`, ~0.5-1.5 KB: the INVITE or the last response) and
    # the route set kept for an in-dialog ACK among them. The UA keeps its last client transaction
    # (`ua.tr`) for the whole dialog, so the INVITE it sent and a dict of ~40 attributes stayed as
    # long as the call. Keep only what may still be read (`FINISHED_TRANSACTION_KEEPS`). A
    # retransmitted request is answered from the response cache (its own reference to the
    # response), never from a finished transaction.
    from sippy.SipTransactionManager import SipTransaction

    original_cleanup = SipTransaction.cleanup
    # sippy's cleanup leaves its timers (teA..teG), callbacks and the like at None, and sippy reads
    # some of them after a transaction is over (`handleIncoming` tests `t.teA`, `teD`, `teE`, `teF`
    # of a request its consumer answered, which our callbacks may have finished meanwhile): each such
    # field reads None from the class once the instance's copy is gone, as it did before.
    READ_AS_NONE_WHEN_FINISHED[:] = cleared_by_cleanup(SipTransaction, original_cleanup)
    for name in READ_AS_NONE_WHEN_FINISHED:
        if not hasattr(SipTransaction, name):
            setattr(SipTransaction, name, None)

    def cleanup(t: Any) -> None:
        original_cleanup(t)
        fields = vars(t)
        kept = {name: fields[name] for name in FINISHED_TRANSACTION_KEEPS if name in fields}
        fields.clear()   # ~40 attributes: a dict of ~1.2 KB per transaction a UA keeps
        fields.update(kept)

    SipTransaction.cleanup = cleanup


def cleared_by_cleanup(transaction_class: Any, cleanup: Any) -> list[str]:
    """The attributes sippy's `SipTransaction.cleanup` sets to None (read off a probe instance)."""
    probe = transaction_class()
    cleanup(probe)
    return sorted(name for name, value in vars(probe).items() if value is None)


# what a finished transaction keeps (the rest reads as sippy's class defaults: `data`, `tid`,
# `address`, `tout` None): a UA's `tr` may be asked its state and method after it is over (sippy's
# CANCEL logic, UaStateDead's `tr.resp_cb = None`, `resume.invite_snapshot`).
FINISHED_TRANSACTION_KEEPS = ("state", "method", "uack", "cancelPending", "needack", "compact", "resp_cb")


# what an ended dialog (sippy's Disconnected or Failed state, kept 32 s to answer its late requests)
# no longer uses: its session descriptions, the response template and last transaction of its
# set-up, our Contact. Kept: what matches a request to it (Call-ID, tags, branch: `UA.isYours`) and
# what `transport.dialog_peer_hosts` reads (next hops, remote target).
ENDED_DIALOG_DROPS = ("lSDP", "rSDP", "uasResp", "tr", "lContact")


def forget_ended_dialog(ua: Any) -> None:
    """Drop what an ended dialog no longer needs (`ENDED_DIALOG_DROPS`), and hand its late requests
    to a small record (`ended_dialog`) so that the UA itself can go; only if it is still ended."""
    from callcenter_sip_edge.sippy.ended_dialog import ended_record

    if not getattr(ua.state, "ended_dialog", False):
        return
    for name in ENDED_DIALOG_DROPS:
        setattr(ua, name, None)
    try:
        del ua.session_sdp_before_update
    except AttributeError:
        pass
    ended_record(ua)


def _ended_dialog_keeps_what_matches_it() -> None:
    # Why: sippy keeps a dialog that ended (BYE sent or received, or set-up failed) for 32 s in the
    # Disconnected or Failed state, answering a late request with 200 (BYE) or 500, and everything
    # it held stays with it: both SDP bodies with their parsed lines, the response template of the
    # INVITE it answered, its last transaction, our Contact, ~5 KB per leg. A call that went through
    # the 1 s welcome message carries the welcome leg like this for its first 33 s (~11 KiB per
    # call of the bench's 2,000 calls up). Drop them at the next reactor turn, after every callback
    # of the turn that ended the dialog has run (ours read the SDP in those callbacks), and hand the
    # dialog's late requests to a record of ~0.9 KB (`ended_dialog`) so that the UA itself (~5.3 KB
    # even trimmed) goes too. Those states answer from the request alone (`req.sendResponse`), so
    # nothing on the wire changes.
    from sippy.Time.Timeout import Timeout
    from sippy.UaStateDisconnected import UaStateDisconnected
    from sippy.UaStateFailed import UaStateFailed

    for state_class in (UaStateDisconnected, UaStateFailed):
        original_init = state_class.__init__

        def init(state: Any, ua: Any, *args: Any, _original: Any = original_init, **kwargs: Any) -> None:
            _original(state, ua, *args, **kwargs)
            Timeout(forget_ended_dialog, 0, 1, ua)

        state_class.__init__ = init
        state_class.ended_dialog = True


def drop_answer_template(ua: Any) -> None:
    """The caller ACKed our 200 to its INVITE: sippy's template of the responses to that INVITE
    (`uasResp`, ~1.6 KB of parsed headers) is not used again; a re-INVITE or UPDATE makes its own."""
    ua.uasResp = None


def without_class_defaults(obj: Any) -> None:
    """Drop from `obj`'s dict the attributes that hold their class's value (the same object: None,
    False, a small int), and rebuild the dict to fit the rest. Reads give the same values."""
    fields = vars(obj)
    if len(fields) <= SMALL_DICT_ENTRIES:
        return   # done already (a re-INVITE is over), or nothing to gain: its table is the small one
    defaults = _class_values(type(obj))
    kept = {name: value for name, value in fields.items() if defaults.get(name, _NOT_ON_CLASS) is not value}
    fields.clear()   # a dict keeps its table when entries are deleted: only a new one fits the rest
    fields.update(kept)


_NOT_ON_CLASS = object()
_CLASS_VALUES: dict[type, dict[str, Any]] = {}


def _class_values(cls: type) -> dict[str, Any]:
    """What reading an attribute of a `cls` instance gives when its dict does not have it (the
    class's and its bases' values), looked up once per class."""
    values = _CLASS_VALUES.get(cls)
    if values is None:
        values = {}
        for base in reversed(cls.__mro__):
            values.update(vars(base))
        _CLASS_VALUES[cls] = values
    return values

# CPython 3.11 gives a dict of up to 42 entries a table of 64 slots (832 bytes), one of 43-85 a table
# of 128 (1,584 bytes): a dict at or under this size has nothing to give back
SMALL_DICT_ENTRIES = 42


def _confirmed_dialog_in_a_smaller_dict() -> None:
    # Why: a confirmed sippy UA has ~51 attributes in its dict, a table sized for 85 (1,584 bytes);
    # ~11 of them hold their class's default again (the timers it no longer runs, the template and
    # branch of its set-up, no auth, ...). Without them the dict fits a table of 42 (832 bytes):
    # ~750 bytes per confirmed leg, two per call. Done when a dialog enters the Connected state (its
    # set-up or a re-INVITE is over), after sippy has set what that state reads. A few attributes set
    # again later only refill the table's free slots. Also then: the finished INVITE transaction
    # (~380 bytes) and an emptied `reqs` (~160 bytes), `set_up_over`.
    from sippy.UaStateConnected import UaStateConnected

    original_init = UaStateConnected.__init__

    def init(state: Any, ua: Any) -> None:
        original_init(state, ua)
        set_up_over(ua)
        without_class_defaults(ua)

    UaStateConnected.__init__ = init

    # a held 2xx (late offer) is ACKed in the Connected state (its handler of CCEventConnect, found
    # by the function: the event classes are sip_events' to import): its transaction goes then
    original_ack = UaStateConnected._recvEventConnect
    handlers = UaStateConnected.recv_event_handlers

    def ack_held_2xx(state: Any, event: Any, extra_headers: Any) -> Any:
        result = original_ack(state, event, extra_headers)
        if state.ua is not None and state.ua.pending_tr is None:
            set_up_over(state.ua)
        return result

    for event_class, handler in list(handlers.items()):
        if handler is original_ack:
            handlers[event_class] = ack_held_2xx


def set_up_over(ua: Any) -> None:
    """A dialog entered the Connected state: its INVITE transaction (`tr`) is read again only by the
    states of a set-up or re-INVITE (to CANCEL it; a new one is `tr` by then) and, for a 2xx whose
    ACK we hold (`pending_tr`), by `resume.invite_snapshot`, so it is kept only then; the transaction
    manager keeps it as long as its timers need it. The dict of INVITEs sent by CSeq (`reqs`, emptied
    by their final responses) is made new when empty: an emptied dict keeps its table."""
    if ua.tr is not None and ua.pending_tr is not ua.tr:
        ua.tr = None
    if ua.reqs is not None and not ua.reqs:
        ua.reqs = {}
