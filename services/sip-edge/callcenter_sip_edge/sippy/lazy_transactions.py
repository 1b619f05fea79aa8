"""A client transaction's CANCEL and 408 built when they are needed, from the request as it was sent
(issue 15: the edge's Python per SIP message).

Reads: the sippy package (imported lazily). Writes: `SipTransaction.cancel` and
`SipTransaction.r408` become attributes built on first read, and SipRequest.genCANCEL / genResponse
answer sippy's newTransaction, and only it, with what to build later; once per process, from
`patches.apply_patches()`.

Why: for every request it sends, sippy's newTransaction builds the response it would hand the UA if
the request timed out (`genResponse(408)`: Via/From/To/Call-ID/CSeq copied), and for every INVITE
also the CANCEL it would send if the call were cancelled (`genCANCEL()`: Request-URI, From, To, Via,
Call-ID, Route copied into a new request). Most are never used: a queued call sends 3 INVITEs and a
BYE, none times out, and only a lost or timed-out ring is cancelled: 7 messages built and dropped.
Now each is built on its first read, from the request's text as it went out (`t.data`), with the
request's target and User-Agent: the same headers as the eager copy (the copy was taken when that
text was rendered; a later change to the UA's objects, such as the To tag set from a 180, reached
neither), and the wire text of a CANCEL identical (tests/unit/test_sippy_lazy_transactions.py).
"""

from __future__ import annotations

from typing import Any

# sippy's own calls that newTransaction makes for these two messages
_CANCEL_CALL: tuple[Any, ...] = ()
_TIMEOUT_CALL = (408, "Request Timeout")


class _Later:
    """A message not built yet: what building it needs, kept when the request was sent."""

    __slots__ = ("kind", "request", "target", "user_agent")

    def __init__(self, kind: str, request: Any) -> None:
        self.kind = kind
        self.request = request   # only if the text cannot be parsed back (not seen; a fallback)
        self.target = request.getTarget()
        self.user_agent = request.user_agent


def _build(transaction: Any, later: _Later) -> Any:
    from sippy.SipRequest import SipRequest

    request = later.request
    data = getattr(transaction, "data", None)
    if isinstance(data, str):
        try:
            request = SipRequest(data)
        except Exception:   # keep sippy's object as the source rather than fail a CANCEL
            request = later.request
        else:
            request.setTarget(later.target)
            request.user_agent = later.user_agent
    if later.kind == "cancel":
        return request.genCANCEL()
    return request.genResponse(*_TIMEOUT_CALL)


class _BuiltOnFirstRead:
    """A data descriptor on SipTransaction: stores what is assigned; a `_Later` is built when read."""

    def __init__(self, name: str) -> None:
        self.slot = f"cc_{name}"

    def __get__(self, transaction: Any, owner: Any = None) -> Any:
        if transaction is None:
            return self
        value = transaction.__dict__.get(self.slot)
        if type(value) is _Later:
            value = transaction.__dict__[self.slot] = _build(transaction, value)
        return value

    def __set__(self, transaction: Any, value: Any) -> None:
        transaction.__dict__[self.slot] = value


def apply() -> None:
    """Install the lazy CANCEL and 408. Call once, from `apply_patches()`."""
    from sippy.SipRequest import SipRequest
    from sippy.SipTransactionManager import SipTransaction, SipTransactionManager

    SipTransaction.cancel = _BuiltOnFirstRead("cancel")
    SipTransaction.r408 = _BuiltOnFirstRead("r408")
    original_new, original_cancel, original_response = (SipTransactionManager.newTransaction, SipRequest.genCANCEL,
                                                        SipRequest.genResponse)
    sending: list[Any] = [None]   # the request whose newTransaction is running (one at a time: one thread runs sippy)

    def new_transaction(self: Any, msg: Any, *args: Any, **kwargs: Any) -> Any:
        outer, sending[0] = sending[0], msg
        try:
            return original_new(self, msg, *args, **kwargs)
        finally:
            sending[0] = outer

    def gen_cancel(self: Any, *call: Any) -> Any:
        if self is sending[0] and call == _CANCEL_CALL:
            return _Later("cancel", self)
        return original_cancel(self, *call)

    def gen_response(self: Any, *call: Any, **named: Any) -> Any:
        if self is sending[0] and call == _TIMEOUT_CALL and not named:
            return _Later("r408", self)
        return original_response(self, *call, **named)

    SipTransactionManager.newTransaction = new_transaction
    SipRequest.genCANCEL, SipRequest.genResponse = gen_cancel, gen_response
