"""The call-handling parameters of a tenant (`cc:{t}:config`): one registry, read by everyone.

Each parameter has a name, a Python type, a default, its allowed values and a doc line. From this
registry the Lua defaults table is rendered (`lua_defaults_table`, expanded into every script by
`callcenter.store.scripts`) and the api builds its config schemas, so a default or a range is
written once. Nothing here touches Redis: the values live in the hash `cc:{t}:config`, where an
absent or empty field means the default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

ConfigValue = int | bool | str

# URI parameter names sent to the queue media (`;cc_pos=3`)
URI_PARAM_PATTERN = r"^[A-Za-z0-9_.-]{1,32}$"
# the longest stream an operator would keep (entries of a few hundred bytes: tens of GB of memory)
MAX_STREAM_LEN = 100_000_000


@dataclass(frozen=True, slots=True)
class Param:
    """One call-handling parameter.

    `type` is int, bool or str; a str with `choices` is an enum. `ge`/`le` bound an int, `pattern`
    or `choices` a str. `dispatcher_env` marks the parameters a dispatcher also writes at start-up
    from its CC_* environment (`DispatchSettings`)."""

    name: str
    type: type[ConfigValue]
    default: ConfigValue
    doc: str
    ge: int | None = None
    le: int | None = None
    pattern: str | None = None
    choices: tuple[str, ...] | None = None
    dispatcher_env: bool = False

    def __post_init__(self) -> None:
        # bool is a subclass of int: compare the exact type so True is no int default and 1 no bool
        if type(self.default) is not self.type:
            raise TypeError(f"{self.name}: default {self.default!r} is not {self.type.__name__}")
        if (self.ge is not None or self.le is not None) and self.type is not int:
            raise TypeError(f"{self.name}: bounds on a {self.type.__name__}")
        if (self.pattern or self.choices) and self.type is not str:
            raise TypeError(f"{self.name}: pattern/choices on a {self.type.__name__}")

    def check(self, value: ConfigValue) -> None:
        """Raise ValueError (naming the parameter) unless `value` is of the type and in the range."""
        if type(value) is not self.type:  # exact: a bool is no int here either
            raise ValueError(f"{self.name}: {value!r} is not {self.type.__name__}")
        if isinstance(value, int) and not isinstance(value, bool):
            if (self.ge is not None and value < self.ge) or (self.le is not None and value > self.le):
                raise ValueError(f"{self.name}: {value} is not in {self.ge}..{self.le}")
        if isinstance(value, str):
            if self.pattern is not None and not re.fullmatch(self.pattern, value):
                raise ValueError(f"{self.name}: {value!r} does not match {self.pattern}")
            if self.choices is not None and value not in self.choices:
                raise ValueError(f"{self.name}: {value!r} is not one of {', '.join(self.choices)}")


CALL_HANDLING: tuple[Param, ...] = (
    Param("wrapup_s", int, 30, "wrap-up after each call, unless the agent has its own (reference: wrapup_time, 30).",
          ge=0, le=86_400, dispatcher_env=True),
    Param("ring_timeout_s", int, 20, "how long an agent rings before the offer fails.",
          ge=1, le=600, dispatcher_env=True),
    Param("reject_on_no_agents", bool, True,
          "reject a call when nobody with the flow's skill is logged in (reference: reject_on_no_agents).",
          dispatcher_env=True),
    Param("no_agents_code", int, 480, "SIP code of that rejection.", ge=400, le=699, dispatcher_env=True),
    Param("queue_pos_param", str, "cc_pos",
          "URI parameter with the position sent to the queue media (reference: queue_pos_param).",
          pattern=URI_PARAM_PATTERN, dispatcher_env=True),
    Param("offer_lease_grace_s", int, 15,
          "an offer is taken back when the edge reports nothing within ring_timeout_s + this.",
          ge=1, le=600, dispatcher_env=True),
    Param("refused_offer_hold_ms", int, 1000,
          "a call whose ring the edge refused (busy with another leg of the call, e.g. its queue media still "
          "being set up) waits at the head of its queue until its media answers or this long, then is offered "
          "again; its agents are freed at once, with no penalty; a ring-all whose phones all failed within this "
          "long of the offer waits out the rest of it before ringing them again; an agent whose single ring failed "
          "within this long is in wrap-up at least until this long after the ring", ge=0, le=60_000),
    # the stream caps are the retention job's last fuse (callcenter.retention), not an XADD MAXLEN:
    # below them a stream loses only what every consumer group has acknowledged
    Param("events_maxlen", int, 5_000_000, "fuse: cc:{t}:events is cut to this many entries, unread ones too, "
          "after a stream.capped alarm (docs/events.md, Retention)", ge=1000, le=MAX_STREAM_LEN),
    Param("commands_maxlen", int, 100_000, "fuse: the same for each edge's command stream",
          ge=1000, le=MAX_STREAM_LEN),
    Param("reports_maxlen", int, 1_000_000, "fuse: the same for cc:{t}:reports", ge=1000, le=MAX_STREAM_LEN),
    Param("ended_call_ttl_s", int, 3600, "how long an ended call stays readable (GET /v1/calls/{id})",
          ge=1, le=30 * 86_400),
    Param("internal_dispatching", bool, True,
          "the built-in dispatcher gives calls to agents; off: calls only queue and POST /v1/calls/{id}/dispatch "
          "assigns them (reference: internal_call_dispatching)"),
    Param("max_no_answer", int, 0,
          "missed offers in a row before an agent is paused (reason no-answer), unless the agent has its own; "
          "0 = never", ge=0, le=1000),
    Param("sl_threshold_s", int, 20, "service-level threshold T (s) of flows without their own", ge=1, le=86_400),
    Param("queue_ewt_param", str, "cc_ewt", "URI parameter with the estimated wait (s) sent to the queue media",
          pattern=URI_PARAM_PATTERN),
    Param("default_aht_s", int, 180, "handle time assumed for estimated waits until a flow has answered calls",
          ge=1, le=86_400),
    Param("chat_dispatch_policy", str, "balancing",
          "how chats are spread over agents, unless the flow says: balancing (fewest ongoing chats first) or "
          "full-load (fill one agent up, leaving the others free for audio calls) (reference: "
          "chat_dispatch_policy)", choices=("balancing", "full-load")),
    Param("chat_capacity", int, 4,
          "chats an agent takes at once unless it has its own (reference: msrp_max_sessions, 4)", ge=1, le=100),
    Param("ring_before_media", bool, False,
          "ring a free agent at arrival with the caller's own offer, before any media answered the caller; off: "
          "a caller is offered only once it is on the queue (or welcome) media, its ACK received, so that a "
          "caller that never ACKs costs no agent (on, it holds the agent it rang for up to 6 s, unblamed)"),
    Param("whisper_max_s", int, 30,
          "an offer of a flow with a flow-id message is taken back after ring_timeout_s + offer_lease_grace_s + "
          "this", ge=1, le=600),
    Param("max_call_s", int, 14_400,
          "the reconciler ends a call (reason stalled) that talks, plays media, or waits in a flow without max_wait_s "
          "for longer than this without a change of state (offers and waits with a maximum have their own bounds)",
          ge=60, le=7 * 86_400),
    Param("max_overflows", int, 3,
          "times a call may overflow from flow to flow (max_wait_s with overflow_flow); at the limit it stays in "
          "its flow's queue (or goes to the flow's overflow_uri, if it has one); 0 = never to another flow",
          ge=0, le=100),
)

PARAMS: Mapping[str, Param] = MappingProxyType({p.name: p for p in CALL_HANDLING})


def param(name: str) -> Param:
    """The parameter called `name` (KeyError for an unknown name)."""
    return PARAMS[name]


def lua_value(value: ConfigValue) -> str:
    """A Python value as a Lua literal; a bool is 1/0, as it is stored in the config hash."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if "'" in value or "\\" in value:
        raise ValueError(f"no quoting for {value!r}")
    return f"'{value}'"


def lua_defaults_table() -> str:
    """`local CONFIG_DEFAULTS = {...}`: the defaults the Lua `cfg()` falls back to. A number default
    tells `cfg()` to read the stored value as a number."""
    rows = "".join(f"  {p.name} = {lua_value(p.default)},\n" for p in CALL_HANDLING)
    return f"local CONFIG_DEFAULTS = {{\n{rows}}}"
