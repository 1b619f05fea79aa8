"""Session timers (RFC 4028) on a call's caller leg and agent leg.

Reads: the caller's INVITE (Session-Expires, Min-SE, Supported, Allow), the agent's 2xx, the
refreshes either peer sends, and the answers to ours (all through `sippy.session_refresh` hooks).
Writes: the timer headers of our INVITEs to agents and of the 2xx we send on both legs, refreshes
(UPDATE, or re-INVITE with our last SDP) when the edge is a leg's refresher, and, when a leg's
session expires, the end of the call (`session_expired`: BYE on every leg, the agent is freed).

Per leg: the interval and the refresher are agreed in the INVITE transaction that set the dialog
up, and again in every refresh. As refresher the edge refreshes at half the interval and gives
the session up at its end without a successful refresh (a 408 or 481 to a refresh ends it at
once); otherwise it gives the session up when no refresh came by the interval's end minus
min(32 s, a third of it) (RFC 4028 10). A leg whose peer does not take part (an agent's 2xx
without Session-Expires) has no timer, as the RFC says. Media legs have none: they are the
edge's own servers, and a call on media is bounded by the dispatcher's timers.

Runs in sippy's turns only (`sippy/reactor.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from sippy.Time.Timeout import Timeout

from callcenter_sip_edge.confirmed import checkpoint
from callcenter_sip_edge.legs import Phase, SipUA, Timer, cancel_timers
from callcenter_sip_edge.session_options import SessionTimerOptions
from callcenter_sip_edge.sippy import session_refresh as sr

if TYPE_CHECKING:
    from callcenter_sip_edge.call import Call

log = structlog.get_logger(__name__)

EXPIRED_REASON = "session_expired"
BUSY_RETRY_S = 1.0        # the dialog has an offer/answer exchange going: refresh a moment later
GLARE_RETRY_S = 1.5       # a 491 to our refresh
RETRY_422_AFTER_S = 0.01  # the INVITE again after an agent's 422: once its ACK is out


def interval_too_small(req: Any, options: SessionTimerOptions) -> Any:
    """The 422 for a new INVITE whose Session-Expires is under our Min-SE (RFC 4028 9), else None."""
    if not options.enabled:
        return None
    asked = sr.session_expires(req)
    if asked is not None and asked[0] < options.min_se_s:
        return sr.too_small(req, options.min_se_s)
    return None


class LegTimer:
    """The session timer of one leg (its UA): interval, who refreshes, and the two timers."""

    __slots__ = ("_expiry", "_refresh", "armed_at", "interval", "leg", "method", "owner", "require", "retried",
                 "running", "ua", "we_refresh")

    def __init__(self, owner: SessionTimers, ua: SipUA, leg: str) -> None:
        self.owner = owner
        self.ua = ua
        self.leg = leg                 # "caller" or "agent", for the log
        self.interval = 0
        self.we_refresh = False
        self.method = "INVITE"
        self.require = True            # the peer supports timers: our 2xx say Require: timer
        self.running = False
        self.retried = False           # our INVITE got a 422 and was sent again with the peer's Min-SE
        self.armed_at = 0.0            # wall-clock start of the current interval (kept in the checkpoint)
        self._refresh: Timer | None = None
        self._expiry: Timer | None = None

    # ------------------------------------------------------------------ headers
    def headers_for_2xx(self) -> list[Any]:
        """Session-Expires in our 2xx to the peer's INVITE/UPDATE (the peer is that transaction's UAC)."""
        if not self.interval:
            return []
        out = [sr.header("session-expires", f"{self.interval};refresher={'uas' if self.we_refresh else 'uac'}")]
        if self.require:
            out.append(sr.header("require", "timer"))
        return out

    def refresh_headers(self) -> list[Any]:
        options = self.owner.options
        return [sr.header("supported", "timer"), sr.header("session-expires", f"{self.interval};refresher=uac"),
                sr.header("min-se", str(options.min_se_s))]

    # ------------------------------------------------------------------ timers
    def start(self) -> None:
        if self.interval <= 0:
            return
        self.running = True
        log.info("call.session_timer", leg=self.leg, interval_s=self.interval, edge_refreshes=self.we_refresh,
                 method=self.method)
        self.arm()

    def arm(self, elapsed_s: float = 0.0) -> None:
        """(Re)start the interval: the refresh at its half if we refresh, the expiry at its end;
        `elapsed_s` of it already gone (an adopted call's interval started in another process)."""
        cancel_timers(self, "_refresh", "_expiry")
        if not self.running or self.interval <= 0:
            return
        self.armed_at = time.time() - elapsed_s
        guarded = self.owner.call.guarded
        if self.we_refresh:
            self._refresh = Timeout(guarded(self.refresh), max(0.0, self.interval / 2 - elapsed_s))
            self._expiry = Timeout(guarded(self.expired), max(0.0, self.interval - elapsed_s))
        else:
            self._expiry = Timeout(guarded(self.expired),
                                   max(0.0, self.interval - min(32.0, self.interval / 3) - elapsed_s))

    def snapshot(self) -> dict[str, Any] | None:
        """What an edge adopting the call needs to go on with this timer (None if it does not run)."""
        if not self.running or self.interval <= 0:
            return None
        return {"interval": self.interval, "we_refresh": self.we_refresh, "method": self.method,
                "require": self.require, "armed_at": round(self.armed_at, 3)}

    def stop(self) -> None:
        self.running = False
        cancel_timers(self, "_refresh", "_expiry")

    def expired(self) -> None:
        self._expiry = None
        if self.running:
            log.warning("call.session_expired", leg=self.leg, interval_s=self.interval)
            self.owner.expired()

    # ------------------------------------------------------------------ refreshes
    def refresh(self) -> None:
        self._refresh = None
        if not self.running:
            return
        if not sr.send_refresh(self.ua, self.method, self.refresh_headers(), self.owner.call.guarded(self.refreshed)):
            self._refresh = Timeout(self.owner.call.guarded(self.refresh), BUSY_RETRY_S)

    def refreshed(self, code: int, resp: Any) -> None:
        """The final response to our refresh."""
        if not self.running:
            return
        if 200 <= code < 300:
            agreed = sr.session_expires(resp)
            if agreed is None and self.require:
                # a peer that takes part dropped the timer: no expiry any more (RFC 4028 7.2)
                log.info("call.session_timer_dropped", leg=self.leg)
                self.stop()
                return
            if agreed is not None:
                self.interval = agreed[0]
                self.we_refresh = agreed[1] != "uas"
            # else a peer without timers (the edge refreshes it by RFC 4028 9): it never says them
            self.arm()
            self.owner.refreshed()
        elif code in (408, 481):
            log.warning("call.session_refresh_failed", leg=self.leg, code=code)
            self.owner.expired()
        elif code in (405, 501) and self.method == "UPDATE":
            self.method = "INVITE"
            self.refresh()
        elif code == 491:
            self._refresh = Timeout(self.owner.call.guarded(self.refresh), GLARE_RETRY_S)
        else:
            # the session stays up until the interval's end unless a later refresh succeeds
            log.info("call.session_refresh_refused", leg=self.leg, code=code)

    def peer_request(self, req: Any) -> Any:
        """A request of the peer on this leg: a refresh re-arms the timer (and may change the
        interval and who refreshes); an UPDATE without SDP is answered here with our headers."""
        if not self.running or not sr.is_in_dialog_refresh(req):
            return None
        agreed = sr.session_expires(req)
        if agreed is not None and agreed[0] >= self.owner.options.min_se_s:
            self.interval = agreed[0]
            self.we_refresh = agreed[1] == "uas"
        self.arm()
        self.owner.refreshed()
        return sr.answer_refresh_update(self.ua, req, self.headers_for_2xx())


class SessionTimers:
    """The call's session timers: the caller's leg and the agent's (one per agent UA INVITEd, the
    one connected is kept)."""

    __slots__ = ("_agents", "call", "caller")

    def __init__(self, call: Call) -> None:
        self.call = call
        self.caller: LegTimer | None = None
        self._agents: dict[int, LegTimer] = {}

    @property
    def options(self) -> SessionTimerOptions:
        return self.call.router.session_options

    # ------------------------------------------------------------------ caller (we are its UAS)
    def caller_invite(self, req: Any) -> None:
        """Agree the caller leg's interval from its INVITE (RFC 4028 9) and hook its UA, before the
        INVITE is handed to it (so our 200 carries the headers)."""
        options = self.options
        if not options.enabled:
            return
        timer = LegTimer(self, self.call.caller, "caller")
        asked = sr.session_expires(req)
        peer_min = sr.min_se(req) or 0
        supported = sr.supports_timer(req)
        interval = options.expires_s if asked is None else min(asked[0], options.expires_s)
        timer.interval = max(interval, peer_min, options.min_se_s)
        if asked is not None and asked[1] is not None:
            refresher = asked[1]
        else:
            refresher = options.refresher if supported else "uas"
        timer.we_refresh = refresher == "uas"
        timer.require = supported
        timer.method = "UPDATE" if sr.allows_update(req) else "INVITE"
        self.caller = timer
        self._hook(timer, on_response=_response_not_taken)

    def caller_confirmed(self) -> None:
        if self.caller is not None and not self.caller.running:
            self.caller.start()

    # ------------------------------------------------------------------ agents (we are their UAC)
    def invite_headers(self, interval: int = 0, min_se: int = 0) -> list[Any] | None:
        """The timer headers of an INVITE to an agent (RFC 4028 7.1); None with timers off."""
        options = self.options
        if not options.enabled:
            return None
        return [sr.header("supported", "timer"),
                sr.header("session-expires", f"{interval or options.expires_s};refresher=uac"),
                sr.header("min-se", str(max(min_se, options.min_se_s)))]

    def hook_agent(self, ua: SipUA) -> None:
        """Hook an agent UA before its INVITE is sent: its 2xx says the interval and refresher."""
        if not self.options.enabled:
            return
        timer = LegTimer(self, ua, "agent")
        self._agents[id(ua)] = timer

        def on_response(resp: Any) -> bool:
            code = resp.getSCode()[0]
            if code == 422 and not timer.retried and resp.getHFBody("cseq").getCSeqMethod() == "INVITE":
                # RFC 4028 7.3: our interval is under the agent's Min-SE: INVITE again with it, once
                wanted = sr.min_se(resp)
                if wanted is not None and wanted > 0:
                    timer.retried = True
                    headers = self.invite_headers(max(wanted, self.options.expires_s), wanted) or []
                    log.info("call.session_interval_raised", leg="agent", min_se_s=wanted)
                    # after the transaction layer's ACK of the 422, which follows this callback
                    Timeout(self.call.guarded(_retry_invite, ua, resp, headers), RETRY_422_AFTER_S)
                    return True
            if 200 <= code < 300 and not timer.running and resp.getHFBody("cseq").getCSeqMethod() == "INVITE":
                agreed = sr.session_expires(resp)
                timer.interval = agreed[0] if agreed is not None else 0
                timer.we_refresh = agreed is not None and agreed[1] != "uas"
                timer.require = sr.supports_timer(resp)
                timer.method = "UPDATE" if sr.allows_update(resp) else "INVITE"
            return False

        self._hook(timer, on_response=on_response)

    def agent_connected(self) -> None:
        """The agent talks to the caller: its leg's timer runs (if its 2xx agreed one)."""
        agent = self.call.agent
        if agent is None or agent.ua is None:
            return
        timer = self._agents.get(id(agent.ua))
        self._agents = {id(agent.ua): timer} if timer is not None else {}
        if timer is not None and not timer.running:
            timer.start()

    # ------------------------------------------------------------------ both
    def _hook(self, timer: LegTimer, *, on_response: Callable[[Any], bool]) -> None:
        sr.hook(timer.ua, on_request=timer.peer_request, on_response=on_response,
                headers_for_2xx=timer.headers_for_2xx)

    # ------------------------------------------------------------------ checkpoint and adoption
    def snapshot(self) -> dict[str, Any]:
        """The running timers of the caller's and the connected agent's leg, for the checkpoint."""
        out: dict[str, Any] = {}
        agent = self.call.agent
        legs = (("caller", self.caller),
                ("agent", self._agents.get(id(agent.ua)) if agent is not None and agent.ua is not None else None))
        for name, timer in legs:
            snap = timer.snapshot() if timer is not None else None
            if snap is not None:
                out[name] = snap
        return out

    def refreshed(self) -> None:
        """A refresh re-armed a leg of a talking call: checkpoint it (the new interval start, and
        the dialog's CSeq the refresh moved on, so an adopting edge's requests are in order)."""
        call = self.call
        if call.agent is not None and call.agent.phase is Phase.TALKING:
            checkpoint(call)

    def adopt(self, snaps: dict[str, Any], caller: SipUA, agent: SipUA) -> None:
        """An adopted call (`adoption.py`): its legs' timers go on from the checkpoint, the interval
        as negotiated and already partly gone (measured on the wall clock: the edges' clocks are
        assumed in sync, as NTP keeps them). A leg checkpointed without a timer gets none."""
        if not self.options.enabled:
            return
        now = time.time()
        for name, ua in (("caller", caller), ("agent", agent)):
            snap = snaps.get(name)
            if not isinstance(snap, dict) or int(snap.get("interval") or 0) <= 0:
                continue
            timer = LegTimer(self, ua, name)
            timer.interval = int(snap["interval"])
            timer.we_refresh = bool(snap.get("we_refresh"))
            timer.method = "UPDATE" if snap.get("method") == "UPDATE" else "INVITE"
            timer.require = bool(snap.get("require", True))
            if name == "caller":
                self.caller = timer
            else:
                self._agents = {id(ua): timer}
            self._hook(timer, on_response=_response_not_taken)
            elapsed = min(max(0.0, now - float(snap.get("armed_at") or now)), float(timer.interval))
            timer.running = True
            log.info("call.session_timer_adopted", leg=name, interval_s=timer.interval,
                     edge_refreshes=timer.we_refresh, elapsed_s=round(elapsed, 1))
            timer.arm(elapsed)

    def expired(self) -> None:
        """A leg's session expired: the call ends, BYE on every leg."""
        self.call.end(by="edge", reason=EXPIRED_REASON)

    def stop(self) -> None:
        for timer in (self.caller, *self._agents.values()):
            if timer is not None:
                timer.stop()
        self._agents = {}


def _retry_invite(ua: SipUA, resp: Any, headers: list[Any]) -> None:
    if not sr.retry_invite(ua, resp, headers):
        log.warning("call.session_retry_skipped", leg="agent")


def _response_not_taken(resp: Any) -> bool:
    """The `on_response` of a leg whose responses the session timer leaves to sippy: one function
    for every call, not a lambda per call."""
    return False
