"""The process lifecycle every service shares: command line, signals, health, work, drain, close.

Reads: the command line (only `--help`), the service's `CC_*` settings, SIGTERM/SIGINT.
Writes: the health endpoint (`CC_HEALTH_PORT`, see `callcenter.health`) and log lines.

A service's `main.run` builds its parts (Redis client, consumer, handlers) and hands them to
`run_service`, which:
- installs SIGTERM/SIGINT handlers that only set the `stop` event (tests running a service
  in-process set it themselves: signal handlers exist only in the main thread); a process started
  by `start_from_command_line` ignores them once the service has closed, so a second SIGTERM while
  it exits does not turn its clean exit into -15;
- serves /healthz and /readyz when a port is set; /readyz is false once stopping;
- runs the service's `prepare` step (wait for a database, write config), then its main work and
  its background loops; when `stop` is set it calls `on_stop` (the work's own flag), gives the
  work and loops `drain_s` to finish, then cancels what is left;
- closes the health server, the Redis client and whatever `close` releases.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
import structlog
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from callcenter.health import ReadyCheck, serve_health
from callcenter.logs import configure_logging
from callcenter.settings import CommonSettings

log = structlog.get_logger(__name__)

S = TypeVar("S", bound=CommonSettings)
Loop = Callable[[asyncio.Event], Awaitable[object]]  # runs until the event is set


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def on_stop_signals(stop: Callable[[], None]) -> None:
    """Call `stop` on SIGTERM or SIGINT; the service then drains and returns from its main loop."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop)


async def _then_ignore_stop_signals(main: Coroutine[Any, Any, None]) -> None:
    """Run a service's `run`; once it has returned (drained and closed), a further SIGTERM or SIGINT
    (a supervisor's second one, a rolling update's tool) has nothing left to stop. Closing the event
    loop would put back their default action, which kills the winding-down process with the signal
    (exit -15, 143 in a shell) and turns a clean exit into a failure: they are taken from the loop
    and ignored instead, for the last moments of the process."""
    try:
        await main
    finally:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)


def settings_help(settings_type: type[BaseSettings]) -> str:
    """The `CC_*` variables a settings class reads, with their defaults, for `--help`."""
    prefix = str(settings_type.model_config.get("env_prefix", ""))
    lines = ["settings (environment variables; every default works on loopback):"]
    for name, field in settings_type.model_fields.items():
        default = "set per host at start" if field.default is PydanticUndefined else repr(field.default)
        lines.append(f"  {(prefix + name).upper():<28} default {default}")
    return "\n".join(lines)


def parse_command_line(prog: str, description: str, settings_type: type[BaseSettings],
                       argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The services take no arguments: `--help` describes the service and its `CC_*` settings
    and exits 0 (before anything starts); anything else is a usage error (exit 2)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=settings_help(settings_type),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser.parse_args(argv)


def start_from_command_line(prog: str, description: str, settings_type: type[S],
                            run: Callable[[S], Coroutine[Any, Any, None]], argv: Sequence[str] | None = None) -> None:
    """A service's `main()`: the command line, its settings from the environment, logging, `run`."""
    parse_command_line(prog, description, settings_type, argv)
    settings = settings_type()
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(_then_ignore_stop_signals(run(settings)))


async def run_service(name: str, *, redis: aioredis.Redis, health_port: int, ready: ReadyCheck,
                      health_host: str = "127.0.0.1",
                      work: Callable[[], Awaitable[object]], on_stop: Callable[[], None],
                      loops: Sequence[Loop] = (), prepare: Callable[[asyncio.Event], Awaitable[bool]] | None = None,
                      close: Callable[[], None] | None = None, stop: asyncio.Event | None = None,
                      drain_s: float = 25.0) -> None:
    """Run one service until `stop` (or a signal), then drain and close (see the module docstring).

    `work` is the service's main task (a consumer's `run`): it ends by itself after `on_stop`.
    `loops` run until `stop` is set. `prepare` returns False when stopped before it was done:
    the work is then never started. `drain_s` stays below the pod's termination grace period.
    The health endpoint listens on `health_host:health_port` (loopback unless a service widens it).
    """
    stop = stop or asyncio.Event()
    # not in the main thread (tests run a service in-process): the caller sets `stop` instead
    with contextlib.suppress(NotImplementedError, RuntimeError):
        on_stop_signals(stop.set)

    async def ready_unless_stopping() -> bool:
        return not stop.is_set() and await ready()

    health = await serve_health(health_host, health_port, ready_unless_stopping) if health_port else None
    try:
        if prepare is None or await prepare(stop):
            await _run_until_stopped(name, work, on_stop, loops, stop, drain_s)
    finally:
        if health:
            health.close()
        await redis.aclose()
        if close:
            close()


async def _run_until_stopped(name: str, work: Callable[[], Awaitable[object]], on_stop: Callable[[], None],
                             loops: Sequence[Loop], stop: asyncio.Event, drain_s: float) -> None:
    main = asyncio.ensure_future(work())
    tasks = [main, *(asyncio.ensure_future(loop(stop)) for loop in loops)]
    watcher = asyncio.create_task(stop.wait())
    await asyncio.wait({main, watcher}, return_when=asyncio.FIRST_COMPLETED)
    watcher.cancel()
    stop.set()  # the work may have ended by itself: the loops end with it
    on_stop()
    _, late = await asyncio.wait(tasks, timeout=drain_s)
    if late:
        log.warning("service.drain_deadline", service=name, drain_s=drain_s, unfinished=len(late))
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    for task in tasks:  # a failure of the work or of a loop is the service's failure (exit 1)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
