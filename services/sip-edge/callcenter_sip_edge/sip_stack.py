"""The SIP side of the edge: sippy driven from the asyncio loop, on the loop's thread.

Reads: commands (`execute(command)` with a typed command of `callcenter.contract.commands`, or its
per-command shorthands; hangup_all, set_accepting, adopt, disown). Writes: `Fact`s to the `on_fact`
callback, on the loop's thread.

There is no SIP thread: sippy's reactor is driven by the loop (`sippy/reactor.py`: the UDP socket is
a reader of the loop, sippy's timers one `call_at` handle, every piece of SIP work a turn that runs
the due timers after it). A command runs at once, as a turn, on the thread that calls `execute`
(the loop's; from another thread it is handed to the loop): sippy code is never on the stack then,
since a turn never awaits and facts leave sippy code through the queue below. The facts of a turn
(and of the turns before the loop's next iteration) go to `on_fact` in one callback scheduled with
`loop.call_soon`, never from inside sippy code, so the publisher takes them as one batch.

sippy has one reactor per process, so one SipStack runs at a time; each start binds it anew to the
loop of that stack (tests start many stacks, on different loops), each stop drops its timers and
its reader.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import structlog

from callcenter.contract.commands import CancelRing, Command, Hangup, Media, Reject, Ring, RingAll
from callcenter_sip_edge.checkpoint import AdoptedCall
from callcenter_sip_edge.facts import Fact
from callcenter_sip_edge.gc_policy import tune_gc
from callcenter_sip_edge.guard import SourceGuard
from callcenter_sip_edge.registrar import RegisterRequest, RegistrarSetup, Reply
from callcenter_sip_edge.session_options import SessionTimerOptions
from callcenter_sip_edge.sippy import patches, transport
from callcenter_sip_edge.sippy.reactor import LoopReactor
from callcenter_sip_edge.sippy.streams import StreamOptions

log = structlog.get_logger(__name__)

STOP_TIMEOUT_S = 5.0
# loop iterations a burst's facts may wait for the rest of the burst (`_deliver_facts`): each holds
# at most a datagram batch (UDP_DRAIN_BATCH) of work, so about a millisecond or two each
FACTS_HELD_ITERATIONS = 4


class SipStack:
    """The SIP side of sip-edge: a sippy B2BUA on the asyncio loop's thread, driven by commands."""

    _active: SipStack | None = None    # sippy allows one running stack per process

    def __init__(self, *, host: str, port: int, on_fact: Callable[[Fact], None],
                 loop: asyncio.AbstractEventLoop, advertised_host: str | None = None,
                 max_message_bytes: int = 8192, user_agent: str = "callcenter",
                 trusted_networks: str = "0.0.0.0/0,::/0", invite_rate: float = 0.0,
                 invite_burst: int = 100, invite_rate_total: float = 0.0, invite_burst_total: int = 100,
                 priority_networks: str = "127.0.0.0/8,::1", adopt: Sequence[AdoptedCall] = (),
                 streams: StreamOptions | None = None, registrar: RegistrarSetup | None = None,
                 session_timers: SessionTimerOptions | None = None,
                 on_facts_delivered: Callable[[], None] | None = None) -> None:
        """`trusted_networks`: INVITEs from other sources get 403 (and their in-dialog requests must
        come from a peer of the dialog). `invite_rate` (per second, 0 = no limit) and `invite_burst`:
        a per-source-IP token bucket, `invite_rate_total`/`invite_burst_total` one for all sources;
        INVITEs over either get 503 + Retry-After. `priority_networks`: the sources whose caller
        priority (X-CC-Priority, ;cc_priority=) is taken ("" = none). `adopt`: the calls a previous
        process of this edge id left (`checkpoint.Checkpoints.load`), adopted before the first datagram
        is read. `streams`: TCP and TLS (off by default; `stream_ports` says where they listen).
        `session_timers`: RFC 4028 session timers (on by default, 1800 s; SessionTimerOptions).
        `on_facts_delivered`: called after each delivery of facts to `on_fact` (the service sends them
        in that callback, rather than in a task woken an iteration later)."""
        self._adopt = list(adopt)
        self._streams = streams
        # REGISTERs (off without): `registrar.submit` runs in a loop callback of its own, its reply as a turn
        self._registrar = None if registrar is None else replace(registrar, submit=self._submit_register)
        self._on_register = None if registrar is None else registrar.submit
        self._session_timers = session_timers
        self.stream_ports: dict[str, int] = {}
        self._host = host
        self._port = port
        self._on_fact = on_fact
        self._on_facts_delivered = on_facts_delivered
        self._loop = loop
        self._advertised_host = advertised_host
        self._max_message_bytes = max_message_bytes
        self._user_agent = user_agent
        # built here so that a bad network list fails when the stack is made, not when it starts
        self.guard = SourceGuard(trusted_networks, rate=invite_rate, burst=invite_burst, total_rate=invite_rate_total,
                                 total_burst=invite_burst_total, priority=priority_networks)
        self._reactor: LoopReactor | None = None   # sippy's reactor on the loop, while running
        self._router: Any = None       # router.CallRouter
        self._state = "new"            # new -> running -> stopping -> stopped
        self.bound_address: tuple[str, int] | None = None
        self._facts: deque[Fact] = deque()
        self._facts_scheduled = False
        self._facts_held = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start serving on the loop this stack was given; call it on that loop's thread (with the
        loop running or not). Returns once the UDP socket is bound; raises if it cannot be."""
        if self._state != "new":
            raise RuntimeError(f"SipStack cannot start: it is {self._state}")
        if SipStack._active is not None:
            raise RuntimeError("another SipStack is running in this process (sippy has one reactor)")
        if self._loop.is_running() and asyncio._get_running_loop() is not self._loop:
            raise RuntimeError("SipStack.start() runs on its loop's thread (sippy runs there)")
        # sippy logs every SIP message at its default level (INFO); keep errors only unless
        # the operator asked for more.
        os.environ.setdefault("SIPLOG_LVL", "ERR")
        patches.apply_patches()
        reactor = LoopReactor(self._loop)
        reactor.open()
        SipStack._active = self
        try:
            # imports sippy: after the patches
            from callcenter_sip_edge.router import CallRouter

            router = CallRouter(host=self._host, port=self._port, emit=self._emit_fact,
                                advertised_host=self._advertised_host,
                                max_message_bytes=self._max_message_bytes, user_agent=self._user_agent,
                                guard=self.guard, streams=self._streams, registrar=self._registrar,
                                session=self._session_timers)
        except BaseException:
            reactor.close()
            SipStack._active = None
            self._state = "stopped"
            raise
        self.bound_address = router.bound_address
        self.stream_ports = transport.stream_ports(router.sip_config)
        self._reactor, self._router = reactor, router
        self._state = "running"
        if self._adopt:   # before the first datagram is read: the loop has not run since the bind
            reactor.turn(_run_command, _adopt, (router, self._adopt, None))
            self._adopt = []
        tune_gc()
        log.info("sip.started", host=self._host, port=self.bound_address[1] if self.bound_address else None)

    def stop(self) -> None:
        """Hang up the remaining calls, give their BYEs a moment, close the sockets and drop the
        timers; at most a few seconds. On the loop's thread this runs sippy itself meanwhile (the
        loop waits); from another thread it is handed to the loop and waited for."""
        reactor = self._reactor
        if self._state != "running" or reactor is None:
            return
        if not reactor.on_its_thread():
            done = threading.Event()

            def stop_there() -> None:
                try:
                    self.stop()
                finally:
                    done.set()

            self._loop.call_soon_threadsafe(stop_there)
            done.wait(STOP_TIMEOUT_S + 1.0)
            return
        self._state = "stopping"
        closed: list[bool] = []
        reactor.turn(self._router.shutdown, lambda: closed.append(True))
        if reactor.run_until(lambda: bool(closed), STOP_TIMEOUT_S):
            log.info("sip.stopped")
        else:
            log.error("sip.stop_timeout", timeout_s=STOP_TIMEOUT_S)
        reactor.close()
        if SipStack._active is self:
            SipStack._active = None
        self._state = "stopped"

    # ------------------------------------------------------------------ facts
    def _emit_fact(self, fact: Fact) -> None:
        """Inside sippy code: queue a fact; they go to `on_fact` after the turn, in one callback."""
        self._facts.append(fact)
        if not self._facts_scheduled:
            self._facts_scheduled = True
            try:
                self._loop.call_soon(self._deliver_facts)
            except RuntimeError:
                # the loop is closed: this fact (and any still queued) will never be delivered
                self._facts_scheduled = False
                log.warning("sip.fact_lost", kind=fact.kind, call_id=fact.call_id, reason="loop_closed",
                            queued=len(self._facts))

    def _deliver_facts(self) -> None:
        """A loop callback of its own: the queued facts, in the order sippy produced them. While the
        UDP socket is being read in pieces (a burst: its last batch left datagrams waiting), they wait
        up to FACTS_HELD_ITERATIONS loop iterations more, so that a burst's facts make a few report
        batches rather than one per datagram batch (each report batch costs a MULTI here, a read and
        a pipeline of steps in the dispatcher); a quiet socket delivers them in the next iteration."""
        reactor = self._reactor
        if reactor is not None and reactor.backlogged and self._facts_held < FACTS_HELD_ITERATIONS:
            self._facts_held += 1
            self._loop.call_soon(self._deliver_facts)
            return
        self._facts_held = 0
        self._facts_scheduled = False
        facts, on_fact = self._facts, self._on_fact
        while facts:
            fact = facts.popleft()
            try:
                on_fact(fact)
            except Exception:
                log.exception("sip.on_fact_failed", kind=fact.kind, call_id=fact.call_id)
        if self._on_facts_delivered is not None:
            try:
                self._on_facts_delivered()
            except Exception:
                log.exception("sip.on_facts_delivered_failed")

    # ------------------------------------------------------------------ registrations
    def _submit_register(self, request: RegisterRequest, reply: Callable[[Reply], None]) -> None:
        """Inside sippy code: a REGISTER with credentials to the asyncio side, in a loop callback of
        its own (not from inside sippy code); its answer comes back as a turn."""
        on_register = self._on_register
        assert on_register is not None

        def answer(result: Reply) -> None:
            self._submit(reply, result)

        self._loop.call_soon(on_register, request, answer)

    def ring_registered(self, command: Ring, targets: list[str], refusal: str = "not_registered") -> None:
        """`command.ring` to an AOR, with its contacts' targets (see CallRouter); with none, refused
        with `refusal`."""
        router = self._running()
        if router is None:
            log.warning("call.command_ignored", call_id=command.call_id, command=command.TYPE, reason="not_running")
            return
        self._submit(router.ring_registered, (command, targets, refusal))

    # ------------------------------------------------------------------ commands
    def execute(self, command: Command) -> None:
        """Carry out one typed command from the dispatcher: the router gives it to its call
        (`call.COMMAND_HANDLERS`) at once, as a turn (from another thread: handed to the loop)."""
        router = self._running()
        if router is None:
            log.warning("call.command_ignored", call_id=command.call_id, command=command.TYPE, reason="not_running")
            return
        self._submit(router.execute, command)

    # The same, one method per command (for tests and tools that drive a stack by hand).
    def media(self, call_id: str, uri: str, purpose: str) -> None:
        self.execute(Media(call_id=call_id, uri=uri, purpose=purpose))

    def ring(self, call_id: str, offer_id: str, agent_id: str, uri: str, timeout_s: float,
             caller_display: str | None = None, whisper_uri: str | None = None) -> None:
        """Ring an agent; with `whisper_uri` (the flow-id message) the agent hears that media once it
        answers, and is connected to the caller when the media server hangs up."""
        self.execute(Ring(call_id=call_id, offer_id=offer_id, agent_id=agent_id, uri=uri, timeout_s=timeout_s,
                          caller_display=caller_display, whisper_uri=whisper_uri))

    def ring_all(self, call_id: str, offer_id: str, targets: list[dict[str, str]], timeout_s: float,
                 caller_display: str | None = None) -> None:
        """Ring several agents at once (targets: [{agent_id, uri}]); the first to answer is connected."""
        self.execute(RingAll(call_id=call_id, offer_id=offer_id, targets=[dict(t) for t in targets],
                             timeout_s=timeout_s, caller_display=caller_display))

    def cancel_ring(self, call_id: str, offer_id: str) -> None:
        self.execute(CancelRing(call_id=call_id, offer_id=offer_id))

    def reject(self, call_id: str, code: int, reason: str) -> None:
        self.execute(Reject(call_id=call_id, code=code, reason=reason))

    def hangup(self, call_id: str, reason: str) -> None:
        self.execute(Hangup(call_id=call_id, reason=reason))

    def hangup_all(self, reason: str) -> None:
        """Hang up every active call (end of a drain); each one reports `call_ended(by=edge)`."""
        router = self._running()
        if router is None:
            log.warning("call.command_ignored", command="hangup_all", reason="not_running")
            return
        self._submit(router.hangup_all, reason)

    def adopt(self, calls: Sequence[AdoptedCall], reason: str) -> None:
        """Adopt calls handed to this edge while it runs (`command.adopt`: a lost peer's), in order
        with the commands; `reason`: the end reason of those that cannot go on."""
        router = self._running()
        if router is None:
            log.warning("call.command_ignored", command="adopt", reason="not_running")
            return
        self._submit(_adopt, (router, list(calls), reason))

    def disown(self, ended: Sequence[str], handed: Sequence[str]) -> None:
        """Drop calls this edge no longer owns (it was declared lost): `ended` ones get BYE (and a
        call_ended the dispatcher finds already applied), `handed` ones are forgotten (a peer has them)."""
        router = self._running()
        if router is None:
            return
        self._submit(_disown, (router, list(ended), list(handed)))

    def call_ids(self) -> list[str]:
        """The ids of the calls this edge carries now."""
        router = self._router
        return list(router.calls) if router is not None else []

    def active_calls(self) -> int:
        router = self._router
        return len(router.calls) if router is not None else 0

    def set_accepting(self, accepting: bool) -> None:
        router = self._router
        if router is not None:
            router.accepting = bool(accepting)   # read for each new INVITE
        log.info("sip.accepting", accepting=bool(accepting))

    def _running(self) -> Any:
        """The router if the stack runs, else None."""
        return self._router if self._reactor is not None and self._state == "running" else None

    def _submit(self, run: Callable[[Any], None], argument: object) -> None:
        """`run(argument)` as a turn of the reactor: at once on the loop's thread, else handed to it."""
        reactor = self._reactor
        assert reactor is not None
        reactor.from_any_thread(_run_command, run, argument)


def _run_command(run: Callable[[Any], None], argument: object) -> None:
    """A turn: one command; its failure is logged with the command (the reactor's turn goes on)."""
    try:
        run(argument)
    except Exception:
        log.exception("call.command_failed", command=argument)


def _adopt(args: tuple[Any, list[AdoptedCall], str | None]) -> None:
    from callcenter_sip_edge.adoption import adopt  # imports sippy

    router, calls, reason = args
    if reason is None:
        adopt(router, calls)
    else:
        adopt(router, calls, reason=reason)


def _disown(args: tuple[Any, list[str], list[str]]) -> None:
    from callcenter_sip_edge.adoption import disown

    router, ended, handed = args
    disown(router, ended=ended, handed=handed)
