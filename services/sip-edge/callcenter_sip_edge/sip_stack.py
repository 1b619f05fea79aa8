"""Thread bridge between the asyncio service and sippy's SIP reactor.

Reads: commands from any thread (`execute(command)` with a typed command of
`callcenter.contract.commands`, or its per-command shorthands; hangup_all, set_accepting).
Writes: `Fact`s to the `on_fact` callback, always on the asyncio loop's thread
(`loop.call_soon_threadsafe`).

sippy runs its own reactor (ED2) on a dedicated "sip" thread, which is also the thread that
imports sippy (ED2 records the importing thread and warns about timers started elsewhere).
Only that thread touches sippy objects: commands are queued to it with ED2.callFromThread,
and facts carry plain data only. sippy has one reactor per process, so one SipStack runs at a
time; the SIP thread is process-wide and parks between stacks (see `_SipThread`).

Both directions are batched (`_Handoff`): each side wakes the other once for whatever has piled
up, not once per fact or command. Every wake-up is a system call and a fight for the GIL between
the two threads; one per fact was 13 % of the SIP thread's samples at 150 calls/s.
The facts of one reactor turn (a batch of datagrams, a pass over the timers, a batch of commands)
wake the loop once, at the end of the turn (`sippy/turns.py`).
"""

from __future__ import annotations

import asyncio
import os
import queue
import sys
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
from callcenter_sip_edge.sippy import patches, transport, turns
from callcenter_sip_edge.sippy.streams import StreamOptions

log = structlog.get_logger(__name__)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
# The GIL hand-over between the SIP thread and the asyncio thread (sys.setswitchinterval). Each
# hop of an agent's BYE -> next INVITE crosses threads (the fact to the loop, the ring command back
# to the reactor), and a thread woken while the other one parses datagrams or builds messages waits
# for the GIL until the running one blocks or this interval runs out: CPython's 5 ms default was
# up to 5 ms per crossing under load. A forced switch costs a few microseconds.
SWITCH_INTERVAL_S = 0.001


class _Handoff:
    """Items passed from producer threads to one consumer thread in order, with at most one
    wake-up of the consumer outstanding: `put` schedules `wake(drain)` only when no drain is
    pending; the drain clears the flag before it empties the queue, so an item put meanwhile is
    either taken by this drain or schedules the next one.

    `hold()` ... `release()` (nested, on the one producer thread) keeps the wake-up for the end:
    the items put meanwhile wake the consumer once, at the outermost release."""

    __slots__ = ("_consume", "_held", "_items", "_pending", "_wake")

    def __init__(self, consume: Callable[[Any], None], wake: Callable[[Callable[[], None]], None]) -> None:
        self._items: deque[Any] = deque()
        self._pending = False
        self._held = 0
        self._consume = consume
        self._wake = wake

    def hold(self) -> None:
        self._held += 1

    def release(self) -> None:
        self._held -= 1
        if not self._held and self._items:
            self._schedule()

    def put(self, item: Any) -> None:
        self._items.append(item)
        if not self._held:
            self._schedule()

    def _schedule(self) -> None:
        if not self._pending:
            self._pending = True
            try:
                self._wake(self.drain)
            except BaseException:
                self._pending = False
                raise

    def drain(self) -> None:
        self._pending = False
        items, consume = self._items, self._consume
        while items:
            consume(items.popleft())

    def __len__(self) -> int:
        return len(self._items)


class _SipThread:
    """The one thread per process that imports sippy and runs its reactor, one stack at a time.

    Why one thread for the whole process: sippy's reactor (ED2) is a process-wide singleton
    bound to the thread that imported sippy, and its ElPeriodic ticker wakes that very thread
    for call-from-thread; running the reactor on a second thread segfaults in procrastinate().
    So the thread parks between stacks instead of exiting.
    """

    _lock = threading.Lock()
    _instance: _SipThread | None = None

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="sip", daemon=True)
        self.thread.start()

    @classmethod
    def shared(cls) -> _SipThread:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def run(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except BaseException:
                log.exception("sip.thread_job_failed")


class SipStack:
    """The SIP side of sip-edge: a sippy B2BUA on the SIP thread, driven by commands."""

    _active: SipStack | None = None    # sippy allows one running stack per process

    def __init__(self, *, host: str, port: int, on_fact: Callable[[Fact], None],
                 loop: asyncio.AbstractEventLoop, advertised_host: str | None = None,
                 max_message_bytes: int = 8192, user_agent: str = "callcenter",
                 trusted_networks: str = "0.0.0.0/0,::/0", invite_rate: float = 0.0,
                 invite_burst: int = 100, invite_rate_total: float = 0.0, invite_burst_total: int = 100,
                 priority_networks: str = "127.0.0.0/8,::1", adopt: Sequence[AdoptedCall] = (),
                 streams: StreamOptions | None = None, registrar: RegistrarSetup | None = None,
                 session_timers: SessionTimerOptions | None = None) -> None:
        """`trusted_networks`: INVITEs from other sources get 403 (and their in-dialog requests must
        come from a peer of the dialog). `invite_rate` (per second, 0 = no limit) and `invite_burst`:
        a per-source-IP token bucket, `invite_rate_total`/`invite_burst_total` one for all sources;
        INVITEs over either get 503 + Retry-After. `priority_networks`: the sources whose caller
        priority (X-CC-Priority, ;cc_priority=) is taken ("" = none). `adopt`: the calls a previous
        process of this edge id left (`checkpoint.Checkpoints.load`), adopted before the first datagram
        is read. `streams`: TCP and TLS (off by default; `stream_ports` says where they listen).
        `session_timers`: RFC 4028 session timers (on by default, 1800 s; SessionTimerOptions)."""
        self._adopt = list(adopt)
        self._streams = streams
        # REGISTERs (off without): `registrar.submit` runs on the asyncio loop, its reply back here
        self._registrar = None if registrar is None else replace(registrar, submit=self._submit_register)
        self._on_register = None if registrar is None else registrar.submit
        self._session_timers = session_timers
        self.stream_ports: dict[str, int] = {}
        self._host = host
        self._port = port
        self._on_fact = on_fact
        self._loop = loop
        self._advertised_host = advertised_host
        self._max_message_bytes = max_message_bytes
        self._user_agent = user_agent
        # built here so that a bad network list fails on the caller's thread; used on the SIP thread
        self.guard = SourceGuard(trusted_networks, rate=invite_rate, burst=invite_burst, total_rate=invite_rate_total,
                                 total_burst=invite_burst_total, priority=priority_networks)
        self._started = threading.Event()
        self._finished = threading.Event()
        self._start_error: BaseException | None = None
        self._reactor: Any = None      # sippy's ED2, set on the SIP thread
        self._router: Any = None       # router.CallRouter, lives on the SIP thread
        self._state = "new"            # new -> running -> stopping -> stopped
        self.bound_address: tuple[str, int] | None = None
        self._facts = _Handoff(self._deliver_fact, self._wake_loop)
        self._commands = _Handoff(self._run_command, self._wake_reactor)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start serving on the SIP thread; return once the UDP socket is bound, raise if it cannot be."""
        if self._state != "new":
            raise RuntimeError(f"SipStack cannot start: it is {self._state}")
        with _SipThread._lock:
            if SipStack._active is not None:
                raise RuntimeError("another SipStack is running in this process (sippy has one reactor)")
            SipStack._active = self
        self._state = "running"
        _SipThread.shared().run(self._serve)
        if not self._started.wait(START_TIMEOUT_S):
            raise RuntimeError("SIP thread did not start in time")
        if self._start_error is not None:
            self._state = "stopped"
            raise self._start_error
        tune_gc()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        log.info("sip.started", host=self._host, port=self.bound_address[1] if self.bound_address else None)

    def stop(self) -> None:
        """Hang up the remaining calls, close the socket, stop the reactor; wait at most a few seconds."""
        if self._state != "running":
            return
        self._state = "stopping"
        if self._reactor is not None and self._router is not None:
            self._reactor.callFromThread(self._router.shutdown, self._reactor.breakLoop)
        if self._finished.wait(STOP_TIMEOUT_S):
            log.info("sip.stopped")
        else:
            log.error("sip.stop_timeout", timeout_s=STOP_TIMEOUT_S)
        self._state = "stopped"

    def _serve(self) -> None:
        """SIP thread: build the stack, run the reactor until stop()."""
        # sippy logs every SIP message at its default level (INFO); keep errors only unless
        # the operator asked for more.
        os.environ.setdefault("SIPLOG_LVL", "ERR")
        try:
            try:
                patches.apply_patches()
                reactor = transport.bind_reactor_to_this_thread()
                turns.set_hooks(self._facts.hold, self._release_facts)
                turns.set_between(self._commands_between_datagrams)
                # imports sippy: on this thread, after the patches
                from callcenter_sip_edge.router import CallRouter

                router = CallRouter(host=self._host, port=self._port, emit=self._emit_fact,
                                    advertised_host=self._advertised_host,
                                    max_message_bytes=self._max_message_bytes, user_agent=self._user_agent,
                                    guard=self.guard, streams=self._streams, registrar=self._registrar,
                                    session=self._session_timers)
                self.bound_address = router.bound_address
                self.stream_ports = transport.stream_ports(router.sip_config)
                if self._adopt:
                    from callcenter_sip_edge.adoption import adopt

                    adopt(router, self._adopt)
                    self._adopt = []
            except BaseException as exc:  # reported to start()'s caller
                self._start_error = exc
                self._started.set()
                return
            self._reactor, self._router = reactor, router
            self._started.set()
            try:
                reactor.loop()
            except BaseException:
                log.exception("sip.reactor_failed")
        finally:
            turns.clear_hooks()
            with _SipThread._lock:
                if SipStack._active is self:
                    SipStack._active = None
            self._finished.set()

    # ------------------------------------------------------------------ facts
    def _emit_fact(self, fact: Fact) -> None:
        """SIP thread: hand a fact to the asyncio loop."""
        try:
            self._facts.put(fact)
        except RuntimeError:
            # the loop is closed: this fact (and any still queued) will never be delivered
            log.warning("sip.fact_lost", kind=fact.kind, call_id=fact.call_id, reason="loop_closed",
                        queued=len(self._facts))

    def _release_facts(self) -> None:
        """SIP thread, at the end of a reactor turn: the facts it produced go to the loop at once."""
        try:
            self._facts.release()
        except RuntimeError:
            log.warning("sip.fact_lost", reason="loop_closed", queued=len(self._facts))

    def _wake_loop(self, drain: Callable[[], None]) -> None:
        self._loop.call_soon_threadsafe(drain)

    def _deliver_fact(self, fact: Fact) -> None:
        """Asyncio thread, in the order the SIP thread produced the facts."""
        try:
            self._on_fact(fact)
        except Exception:
            log.exception("sip.on_fact_failed", kind=fact.kind, call_id=fact.call_id)

    # ------------------------------------------------------------------ registrations
    def _submit_register(self, request: RegisterRequest, reply: Callable[[Reply], None]) -> None:
        """SIP thread: a REGISTER with credentials to the asyncio side; its answer comes back here."""
        on_register = self._on_register
        assert on_register is not None

        def answer(result: Reply) -> None:   # asyncio thread
            self._commands.put((reply, result))

        self._loop.call_soon_threadsafe(on_register, request, answer)

    def ring_registered(self, command: Ring, targets: list[str], refusal: str = "not_registered") -> None:
        """`command.ring` to an AOR, with its contacts' targets (any thread; see CallRouter); with
        none, refused with `refusal`."""
        router = self._router
        if self._reactor is None or router is None or self._state != "running":
            log.warning("call.command_ignored", call_id=command.call_id, command=command.TYPE, reason="not_running")
            return
        self._commands.put((router.ring_registered, (command, targets, refusal)))

    # ------------------------------------------------------------------ commands
    def execute(self, command: Command) -> None:
        """Carry out one typed command from the dispatcher (any thread): queued to the SIP thread,
        where the router gives it to its call (`call.COMMAND_HANDLERS`)."""
        router = self._router
        if self._reactor is None or router is None or self._state != "running":
            log.warning("call.command_ignored", call_id=command.call_id, command=command.TYPE, reason="not_running")
            return
        self._commands.put((router.execute, command))

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
        reactor, router = self._reactor, self._router
        if reactor is None or router is None or self._state != "running":
            log.warning("call.command_ignored", command="hangup_all", reason="not_running")
            return
        self._commands.put((router.hangup_all, reason))

    def adopt(self, calls: Sequence[AdoptedCall], reason: str) -> None:
        """Adopt calls handed to this edge while it runs (`command.adopt`: a lost peer's), on the SIP
        thread in order with the commands; `reason`: the end reason of those that cannot go on."""
        router = self._router
        if self._reactor is None or router is None or self._state != "running":
            log.warning("call.command_ignored", command="adopt", reason="not_running")
            return
        self._commands.put((_adopt_on_sip_thread, (router, list(calls), reason)))

    def disown(self, ended: Sequence[str], handed: Sequence[str]) -> None:
        """Drop calls this edge no longer owns (it was declared lost): `ended` ones get BYE (and a
        call_ended the dispatcher finds already applied), `handed` ones are forgotten (a peer has them)."""
        router = self._router
        if self._reactor is None or router is None or self._state != "running":
            return
        self._commands.put((_disown_on_sip_thread, (router, list(ended), list(handed))))

    def call_ids(self) -> list[str]:
        """The ids of the calls this edge carries now (a snapshot: list() of a dict is atomic in CPython)."""
        router = self._router
        return list(router.calls) if router is not None else []

    def active_calls(self) -> int:
        router = self._router
        # len() of a dict owned by the SIP thread is an atomic read in CPython
        return len(router.calls) if router is not None else 0

    def set_accepting(self, accepting: bool) -> None:
        router = self._router
        if router is not None:
            # a plain attribute read by the SIP thread for each new INVITE
            router.accepting = bool(accepting)
        log.info("sip.accepting", accepting=bool(accepting))

    def _commands_between_datagrams(self) -> None:
        """SIP thread, between two datagrams of a batch: run the commands queued so far (their
        wake-up still comes and finds the queue empty, or takes what was put since)."""
        if self._commands:
            self._commands.drain()

    def _wake_reactor(self, drain: Callable[[], None]) -> None:
        self._reactor.callFromThread(drain)

    @staticmethod
    def _run_command(item: tuple[Callable[[Any], None], object]) -> None:
        """SIP thread: run one queued command; never let an exception reach the reactor."""
        run, argument = item
        try:
            run(argument)
        except Exception:
            log.exception("call.command_failed", command=argument)


def _adopt_on_sip_thread(args: tuple[Any, list[AdoptedCall], str]) -> None:
    from callcenter_sip_edge.adoption import adopt  # imports sippy: on the SIP thread only

    router, calls, reason = args
    adopt(router, calls, reason=reason)


def _disown_on_sip_thread(args: tuple[Any, list[str], list[str]]) -> None:
    from callcenter_sip_edge.adoption import disown

    router, ended, handed = args
    disown(router, ended=ended, handed=handed)
