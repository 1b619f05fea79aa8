"""What sippy keeps per message and per transaction, trimmed to what its timers still need.

Reads: the sippy package (imported lazily, on the SIP thread, from `patches.apply_patches`).
Writes: replaces a module global of sippy's transaction manager and wraps `SipTransaction.cleanup`,
once per process. Nothing here changes what goes on the wire: a retransmitted request is still
answered from the response cache for as long as before, and a live transaction keeps everything
its timers use. Measured with `bench/edge_memory.py` (bench/README.md, "Issue 15: sip-edge memory
per call").
"""

from __future__ import annotations

from typing import Any

_applied = False


def apply_memory_patches() -> None:
    """Patch sippy 2.5.0 in place; idempotent. Call on the SIP thread before any sippy object is created."""
    global _applied
    if _applied:
        return
    _one_entry_for_every_absorbed_message()
    _finished_transaction_forgets_its_messages()
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
    # manager: no timer of it is left), and drops its callbacks and timers but not the rendered
    # message (`data`, ~0.5-1.5 KB: the INVITE or the last response) nor the route set kept for an
    # in-dialog ACK. The UA keeps its last client transaction (`ua.tr`) for the whole dialog, so
    # the INVITE it sent stayed in memory as long as the call. A retransmitted request is answered
    # from the response cache (its own reference to the response), not from a finished transaction.
    from sippy.SipTransactionManager import SipTransaction

    original_cleanup = SipTransaction.cleanup

    def cleanup(t: Any) -> None:
        original_cleanup(t)
        t.data = None
        for name in ("dialog_route_set", "ack_rAddr"):
            try:
                delattr(t, name)
            except AttributeError:
                pass

    SipTransaction.cleanup = cleanup

