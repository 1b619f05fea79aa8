"""The streams of the contract: who writes each, which consumer group reads it, which types it carries.

Names of a tenant's stream keys come from `callcenter.store.keys.Keys` (`reports`,
`commands(edge)`, `events`, `dead`); this module names the consumer groups and the entry families,
so the services and the docs take them from one place. Reads and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Stream:
    """One stream: its key under the tenant prefix, the group that consumes it, the type families."""

    key: str                  # after `cc:{t}:`; `<edge>` stands for the sip-edge id
    families: tuple[str, ...]  # type families (`report` = `report.*`); empty: any type
    group: str = ""           # the consumer group of the service that reads it; "": none of ours


REPORTS = Stream("reports", ("report",), "dispatcher")      # sip-edges -> dispatchers
COMMANDS = Stream("commands:<edge>", ("command",), "edge")  # dispatcher/api -> one sip-edge
EVENTS = Stream("events", ("call", "agent", "stream"), "cdr-writer")  # Lua steps -> cdr-writer, analytics
DEAD = Stream("dead", ())                                   # dead letters of every consumer, for operators

STREAMS: tuple[Stream, ...] = (REPORTS, COMMANDS, EVENTS, DEAD)
