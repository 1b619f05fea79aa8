"""Request and response bodies of the api (pydantic). Reads and writes nothing itself.

Ids and skills are restricted to `[A-Za-z0-9_.-]`: they become parts of Redis keys and of the
comma-separated skill lists the Lua scripts split, so `:`, `,`, `|` and spaces must never appear.
Flow, agent and call ids follow one pattern (`id_pattern`): they also appear in URL paths, so an
id starts with a letter, digit or `_` (no `.`, `..`, `.hidden` or `-option`). Request bodies are
strict: `"10"` or `true` is no number.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, create_model, model_validator

from callcenter.store.config import CALL_HANDLING, Param


def id_pattern(max_length: int) -> str:
    """The pattern of flow, agent and call ids of at most `max_length` characters."""
    return rf"^[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{max_length - 1}}}$"


FLOW_ID_PATTERN = id_pattern(64)
AGENT_ID_PATTERN = id_pattern(128)
# the sip-edge's call ids are uuid4 hex (32 characters); the CDR column holds 128
CALL_ID_PATTERN = id_pattern(128)
SKILL_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"

# sip:/sips: URI: optional userinfo, a host (name, IPv4 or [IPv6]), optional port, params, headers
_SIP_URI = re.compile(
    r"^(?P<scheme>sips?):"
    r"(?:(?P<userinfo>[^@\s;?]+)@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
    r"(?::(?P<port>\d{1,5}))?"
    r"(?P<params>;[^\s?]*)?"
    r"(?P<headers>\?\S*)?$",
    re.IGNORECASE,
)


def check_sip_uri(value: str) -> str:
    match = _SIP_URI.match(value)
    if match is None:
        raise ValueError("must be a SIP URI with a host, e.g. sip:queue@media.example.com:5060")
    port = match.group("port")
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError("SIP URI port must be 1-65535")
    return value


SipUri = Annotated[str, StringConstraints(strip_whitespace=True, max_length=255), AfterValidator(check_sip_uri)]
Skill = Annotated[str, StringConstraints(pattern=SKILL_PATTERN)]


class _Body(BaseModel):
    # a misspelt field is an error, not a silently ignored value; no coercion of "10" or true to 10
    model_config = ConfigDict(extra="forbid", strict=True)


class _View(BaseModel):
    # built from the read views of callcenter.store.reads (frozen dataclasses of the same field names)
    model_config = ConfigDict(from_attributes=True)


ItemT = TypeVar("ItemT")


class Page(BaseModel, Generic[ItemT]):
    """One page of a list (`callcenter_api.paging`): pass `next_cursor` as `?cursor=` for the next one."""

    items: list[ItemT]
    next_cursor: str | None = Field(description="the cursor of the next page; null on the last page")


# -- flows -----------------------------------------------------------------------------------------

# how a free agent is chosen (docs/routing.md; the Lua's pick_agent knows each)
Strategy = Literal["longest-idle", "round-robin", "fewest-calls", "least-talk-time", "random", "top-down",
                   "ring-all"]
FlowId = Annotated[str, StringConstraints(pattern=FLOW_ID_PATTERN)]
Seconds = Annotated[int, Field(ge=0, le=86_400)]
ChatPolicy = Literal["balancing", "full-load"]
DISSUADING_THRESHOLDS = ("dissuading_qsize_th", "dissuading_ewt_th", "dissuading_onhold_th")


class FlowIn(_Body):
    """A flow (a queue) as provisioned: its skill, priority and media URIs, and its routing options."""

    skill: Skill
    priority: int = Field(default=256, ge=0, le=1_000_000, description="0 is the highest priority")
    welcome_uri: SipUri | None = None
    queue_uri: SipUri
    dissuading_uri: SipUri | None = None
    prepend_cid: str | None = Field(default=None, max_length=32)
    max_wrapup_s: Seconds = Field(default=0, description="cap on the agents' wrap-up; 0 = none")
    strategy: Strategy = Field(
        default="longest-idle",
        description="how a free agent is chosen: longest-idle; round-robin (agent id order, after the last one "
                    "chosen for this flow); top-down (agent id order from the first); fewest-calls (answered); "
                    "least-talk-time; random; ring-all (every free agent rings, the first to answer wins)")
    max_wait_s: Seconds = Field(default=0, description="after this long waiting, the call overflows to "
                                                       "overflow_flow, else to overflow_uri; 0 = no maximum")
    overflow_flow: FlowId | None = Field(default=None, description="flow id the call moves to after max_wait_s "
                                                                   "(keeping its arrival time); not this flow")
    overflow_uri: SipUri | None = Field(default=None, description="SIP URI the call is bridged to after "
                                                                  "max_wait_s when there is no overflow_flow "
                                                                  "(outcome overflowed)")
    dissuading_hangup: bool = Field(default=False, description="after the dissuading media: hang up (true, "
                                                               "outcome dissuaded) or go back to the queue")
    dissuading_qsize_th: int = Field(default=0, ge=0, le=1_000_000,
                                     description="dissuade a new call when this many calls wait; 0 = off")
    dissuading_ewt_th: Seconds = Field(default=0, description="dissuade a new call whose estimated wait exceeds "
                                                              "this (s), or when nobody is logged in; 0 = off")
    dissuading_onhold_th: Seconds = Field(default=0, description="dissuade a call that has waited this long (s) "
                                                                 "since it was queued; 0 = off")
    sl_threshold_s: Seconds = Field(default=0, description="service-level threshold T (s); 0 = the global "
                                                           "sl_threshold_s (GET /v1/config)")
    flow_id_uri: SipUri | None = Field(default=None, description="the flow-id message: media played to the "
                                                                 "agent who answered, before the caller is "
                                                                 "connected (reference: message_flow_id)")
    chat_policy: ChatPolicy | None = Field(default=None, description="how chats of this flow are spread: "
                                                                     "balancing (fewest ongoing chats first) or "
                                                                     "full-load (fill one agent up first); null "
                                                                     "= the global chat_dispatch_policy")
    max_call_duration_s: Seconds = Field(default=0, description="a connected call is hung up after this long "
                                                                "(s; CDR reason max_duration); 0 = no limit")

    @model_validator(mode="after")
    def _coherent(self) -> FlowIn:
        on = [name for name in DISSUADING_THRESHOLDS if getattr(self, name) > 0]
        if on and self.dissuading_uri is None:
            raise ValueError(f"{', '.join(on)} need dissuading_uri (the media dissuaded callers hear)")
        if self.max_wait_s > 0 and self.overflow_flow is None and self.overflow_uri is None:
            raise ValueError("max_wait_s needs overflow_flow or overflow_uri (where the call goes after it)")
        return self


class FlowOut(BaseModel):
    """A provisioned flow."""

    # plain types: a response never re-validates what SQL holds
    model_config = ConfigDict(from_attributes=True)

    id: str
    skill: str
    priority: int
    welcome_uri: str | None
    queue_uri: str
    dissuading_uri: str | None
    prepend_cid: str | None
    max_wrapup_s: int
    strategy: str
    max_wait_s: int
    overflow_flow: str | None
    overflow_uri: str | None
    dissuading_hangup: bool
    dissuading_qsize_th: int
    dissuading_ewt_th: int
    dissuading_onhold_th: int
    sl_threshold_s: int
    flow_id_uri: str | None
    chat_policy: str | None
    max_call_duration_s: int
    created_at: datetime
    updated_at: datetime


# -- agents ----------------------------------------------------------------------------------------

def _dedupe(skills: list[str]) -> list[str]:
    return list(dict.fromkeys(skills))


class AgentIn(_Body):
    """An agent as provisioned: its SIP URIs, skills, wrap-up and chat capacity."""

    uri: SipUri | None = Field(default=None, description="audio SIP URI (reference: location); null = the "
                                                         "agent takes no audio calls")
    chat_uri: SipUri | None = Field(default=None, description="SIP URI for chats (MSRP; reference: "
                                                              "msrp_location); null = the agent takes no chats")
    chat_capacity: int | None = Field(default=None, ge=1, le=100,
                                      description="chats at once (reference: msrp_max_sessions); null = the "
                                                  "global chat_capacity")
    skills: Annotated[list[Skill], Field(min_length=1, max_length=64), AfterValidator(_dedupe)]
    wrapup_s: int | None = Field(default=None, ge=0, le=86_400, description="null = the global wrap-up time")
    max_no_answer: int | None = Field(default=None, ge=0, le=1000,
                                      description="missed offers in a row before the agent is paused with reason "
                                                  "no-answer; null = the global max_no_answer, 0 = never")

    @model_validator(mode="after")
    def _reachable(self) -> AgentIn:
        if self.uri is None and self.chat_uri is None:
            raise ValueError("an agent needs uri (audio calls), chat_uri (chats) or both")
        return self


class AgentLive(_View):
    """The agent's runtime state in Redis (the agent hash); `fields` holds every raw field."""

    state: str
    call: str | None = None
    logout_pending: bool = False
    pause_reason: str | None = Field(default=None, description="reason code of the current pause")
    pause_pending: str | None = Field(default=None, description="reason of a pause asked for during a call: it "
                                                                "starts when the call ends")
    state_since_ms: int | None = None
    idle_since_ms: int | None = None
    logged_in_ms: int | None = None
    wrapup_end_ms: int | None = None
    chats: int = Field(default=0, description="chats the agent holds now (offered or connected)")
    fields: dict[str, str] = Field(default_factory=dict)


class AgentOut(BaseModel):
    """A provisioned agent with its live state."""

    id: str
    uri: str | None
    chat_uri: str | None
    chat_capacity: int | None
    skills: list[str]
    wrapup_s: int | None
    max_no_answer: int | None
    state: str = Field(description="live state (logged_out, free, ringing, in_call, in_chat, wrap_up, paused); "
                                   "same as live.state")
    created_at: datetime
    updated_at: datetime
    live: AgentLive | None = Field(default=None, description="null when the agent is not in the Redis cache")


class LoginOut(BaseModel):
    """The agent's state after a login."""

    agent_id: str
    state: str = Field(description="free, ringing (a waiting call was handed over at once), in_call, wrap_up")
    already: bool = False


class LogoutOut(BaseModel):
    """The agent's state after a logout request (pending while it is in a call)."""

    agent_id: str
    state: Literal["logged_out", "pending"] = Field(
        description="pending: the agent is ringing or in a call; it is logged out when that call ends")
    already: bool = False


class PauseIn(_Body):
    """Why the agent pauses."""

    reason: Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] = Field(
        description="reason code, e.g. lunch, break, training ([A-Za-z0-9_.:-], up to 64); shown in "
                    "agent.paused and in the agent's pause_reason")


class PauseOut(BaseModel):
    """The agent's state after a pause request (pending while it is in a call)."""

    agent_id: str
    state: Literal["paused", "pending"] = Field(
        description="pending: the agent is ringing or in a call; the pause starts when that call ends")
    reason: str
    already: bool = Field(default=False, description="the agent was already paused with this reason")


class AgentStateOut(BaseModel):
    """The agent's state after an unpause or a forced release."""

    agent_id: str
    state: str = Field(description="the agent's state after the step (free, ringing when a waiting call was "
                                   "handed over at once, ...)")
    already: bool = Field(default=False, description="nothing to do: the agent was not paused / not busy")


# -- live views ------------------------------------------------------------------------------------

class CallOut(_View):
    """A live call as the dispatcher sees it."""

    call_id: str
    state: str
    flow: str
    caller: str
    agent_id: str | None = None
    edge: str | None = None
    received_ms: int | None = None
    media_type: str = Field(default="audio", description="audio or chat")
    fields: dict[str, str] = Field(default_factory=dict, description="the raw call hash")


class QueueOut(_View):
    """One flow's queue: its waiting calls and chats and the agents that can take them."""

    flow_id: str
    skill: str
    priority: int
    waiting: int = Field(description="audio calls waiting")
    calls: list[str] = Field(description="waiting call ids, next served first (at most `limit`)")
    chats_waiting: int = Field(description="chats waiting (a queue of their own)")
    chats: list[str] = Field(description="waiting chat ids, next served first (at most `limit`)")


class DispatchIn(_Body):
    """The agent to hand a queued call to (external dispatching)."""

    agent_id: Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]


class DispatchOut(BaseModel):
    """The call and the agent it was handed to."""

    call_id: str
    agent_id: str
    state: str = Field(description="the call's state: offered (the agent is ringing)")
    offer_id: str | None = None


# -- CDRs ------------------------------------------------------------------------------------------

class CdrOut(BaseModel):
    """One call detail record: a call's final row (attempt 0) or the row of an agent attempt that did
    not connect (attempt >= 1), with the reference's meaning (services/cdr-writer/README.md)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    call_id: str
    attempt: int = Field(description="0 = the call's final row; 1, 2, ... = its agent attempts that did not connect")
    flow_id: str
    caller: str
    agent_id: str | None
    received_at: datetime
    wait_ms: int
    pickup_ms: int = Field(description="final row: the answering agent's ring time; attempt row: that agent's")
    talk_ms: int
    outcome: str = Field(description="answered, abandoned, rejected, failed, dissuaded, overflowed; not_connected "
                                     "for an attempt row")
    ended_by: str
    reason: str
    rejections: int = Field(description="the call's rejections (attempt rows: before this one)")
    media_type: str = Field(description="audio or chat")
    event_id: str
    call_type: int = Field(description="the reference's: -2 attempt, -1 error, 0 answered, 1 dropped before an answer")
    fstats: int = Field(description="bits: 1 inbound, 2 distributed to an agent, 4 answered, 8 abandoned")
    tenant: str
    sip_call_id: str | None
    edge: str | None
    priority: int | None
    queue_position: int | None = Field(description="calls ahead when it first entered a queue; null: never queued")
    hold_ms: int | None = Field(description="final row: first entry into a queue until an agent took the call or "
                                            "it ended")
    dissuaded_rule: str | None
    overflow_to_flow: str | None
    overflow_to_uri: str | None


class CdrPage(BaseModel):
    """A page of CDRs, newest first."""

    items: list[CdrOut]
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page; null on the last page (offset paging)")
    next_cursor: str | None = Field(description="cursor of the next page (?cursor=); null on the last page")


class ReloadOut(BaseModel):
    """How many flows and agents were re-seeded into Redis from SQL."""

    flows: int
    agents: int
    removed_flows: list[str] = Field(default_factory=list)
    removed_agents: list[str] = Field(default_factory=list)
    kept: list[str] = Field(default_factory=list, description="cache entries not in SQL that could not be "
                                                          "removed (calls waiting, agent logged in)")


# -- call-handling parameters (cc:{t}:config) --------------------------------------------------------
# Both models are built from the registry `callcenter.store.config.CALL_HANDLING` (name, type,
# default, range, doc), so a parameter is declared once; mypy sees the plain classes below.

def _config_type(param: Param) -> Any:
    """The parameter's type with its range: Literal for choices, a pattern for a str, ge/le for an int."""
    if param.choices is not None:
        return Literal[param.choices]
    if param.pattern is not None:
        return Annotated[str, StringConstraints(pattern=param.pattern)]
    if param.ge is not None or param.le is not None:
        return Annotated[int, Field(ge=param.ge, le=param.le)]
    return param.type


if TYPE_CHECKING:
    class ConfigOut(BaseModel):
        """The effective call-handling parameters (built from the registry at run time)."""

        pass

    class ConfigPatch(_Body):
        """Call-handling parameters to change (built from the registry at run time)."""

        pass
else:
    ConfigOut = create_model(
        "ConfigOut",
        __doc__="The effective call-handling parameters: the values in `cc:{t}:config`, defaults filled in.",
        # a response shows what is stored: the range is checked on the way in (ConfigPatch)
        **{p.name: (Literal[p.choices] if p.choices else p.type, Field(description=p.doc))
           for p in CALL_HANDLING})
    ConfigPatch = create_model(
        "ConfigPatch", __base__=_Body,
        __doc__="Parameters to change; the others are kept. `null` removes a value (back to the default).",
        **{p.name: (_config_type(p) | None, Field(default=None, description=p.doc)) for p in CALL_HANDLING})


# -- statistics (GET /v1/stats) ------------------------------------------------------------------------
# Names in brackets are the OpenSIPS call_center module's statistics, for users migrating from it.
# Times are milliseconds (the reference gives seconds).

class _Counters(_View):
    incalls: int = Field(description="calls accepted (not rejected at arrival) [ccg_incalls / ccf_incalls-<flow>]")
    distributed: int = Field(description="offers made to agents; a call offered again after a failed offer counts "
                                         "again [ccg_distributed_incalls / ccf_dist_incalls-<flow>]")
    answered: int = Field(description="calls answered by an agent (chats included), counted when the agent "
                                      "answers [ccg_answered_incalls / ccf_answ_incalls-<flow>; counted at call "
                                      "end there]")
    answered_chats: int = Field(description="the chats among them [ccg_answered_inchats / "
                                            "ccf_answ_inchats-<flow>]")
    abandoned: int = Field(description="calls the caller hung up before an agent answered "
                                       "[ccg_abandonned_incalls / ccf_aban_incalls-<flow>]")
    overflowed: int = Field(description="calls moved away after max_wait_s (no reference counterpart)")
    overflowed_in: int = Field(description="calls moved into the flow from another flow's max_wait_s (overflow_flow); "
                                           "not counted in incalls (no reference counterpart)")
    onhold: int = Field(description="gauge, not reset: calls waiting for an agent now (welcome, queued, ringing, "
                                    "dissuading) [ccg_onhold_calls / ccf_onhold_calls-<flow>]")
    onhold_chats: int = Field(description="gauge: the chats among them [ccg_onhold_chats / "
                                          "ccf_onhold_chats-<flow>]")
    queued: int = Field(description="calls and chats in the queue now (ZCARD of the flow queues) "
                                    "[ccf_queued_calls-<flow>]")
    free_agents: int = Field(description="agents free now (per flow: with the flow's skill) "
                                         "[ccg_free_agents / ccf_free_agents-<flow>]")
    logged_agents: int = Field(description="agents logged in now, paused and busy ones included (per flow: with "
                                           "the flow's skill) [list_flows 'Logged Agents']")
    awt_ms: int = Field(description="average wait: awt_sum_ms / awt_n over ended calls (answered: arrival to "
                                    "answer; others: arrival to end; rejected calls excluded); 0 with no sample "
                                    "[ccg_awt / ccf_awt-<flow>]")
    att_ms: int = Field(description="average talk time: talk_sum_ms / talk_n over ended answered calls; 0 with "
                                    "no sample [list_flows 'Avg Call Duration']")
    talk_n: int = Field(description="ended answered calls, the samples of att_ms [list_flows 'Processed Calls']")
    load: int = Field(description="100 * (onhold + logged_agents - free_agents) / logged_agents, in %: busy "
                                  "agents plus waiting calls per logged-in agent; 0 when nobody is logged in "
                                  "[ccg_load / ccf_load-<flow>]")


class GlobalStats(_Counters):
    """The counters of every flow together."""

    reset_ms: int | None = Field(description="when the counters were last reset (POST /v1/stats/reset); null if "
                                             "never")


class FlowStats(_Counters):
    """The counters of one flow."""

    flow_id: str
    skill: str
    etw_ms: int = Field(description="estimated time to wait: att_ms * queued / logged_agents; 0 when nobody is "
                                    "logged in [ccf_etw-<flow>]")
    aht_ema_ms: int | None = Field(description="recent handle time (moving average of talk times) used for the "
                                               "estimated wait sent to the queue media; not reset; null until an "
                                               "answered call ended")


class AgentStats(_View):
    """One agent's counters and state."""

    agent_id: str
    state: str
    distributed: int = Field(description="offers made to the agent [cca_dist_incalls-<agent>]")
    answered: int = Field(description="audio offers the agent answered [cca_answ_incalls-<agent>]")
    answered_chats: int = Field(description="chat offers the agent answered [cca_answ_inchats-<agent>]")
    missed: int = Field(description="offers the agent rejected or did not answer "
                                    "[cca_aban_incalls-<agent>, which counts the same]")
    talk_ms: int = Field(description="total talk time of the agent's ended calls")
    att_ms: int = Field(description="average talk time: talk_ms / answered (a call in progress counts in "
                                    "answered, not yet in talk_ms); 0 with no answered call [cca_att-<agent>]")


class StatsOut(_View):
    """Statistics with the reference module's meanings, globally and per flow and agent."""

    global_: GlobalStats = Field(serialization_alias="global", description="every flow together")
    flows: list[FlowStats]
    agents: list[AgentStats]


class StatsResetOut(BaseModel):
    """When the counters were reset."""

    reset_ms: int


# -- service level (GET /v1/service-level) ----------------------------------------------------------------

class SlWindow(_View):
    """Service level over one window of whole minutes."""

    minutes: int = Field(description="the window: the current (partial) minute and the minutes-1 before it")
    offered: int = Field(description="calls accepted (counted in the minute they arrived)")
    answered: int = Field(description="calls answered (in the minute of the answer)")
    answered_in_t: int = Field(description="calls answered within T of their arrival")
    abandoned: int = Field(description="calls abandoned before an agent answered")
    abandoned_in_t: int = Field(description="calls abandoned within T of their arrival")
    service_level_pct: float | None = Field(
        description="100 * answered_in_t / (offered - abandoned_in_t), at most 100 (facts are counted in the "
                    "minute they happen, so a call may arrive in one window and be answered in the next); null "
                    "when offered - abandoned_in_t is 0 (no call to measure)")


class ServiceLevelOut(_View):
    """One flow's service level over the last 1, 15 and 60 minutes."""

    flow_id: str
    threshold_s: int = Field(description="T: the flow's sl_threshold_s, else the global one")
    windows: list[SlWindow] = Field(description="1, 15 and 60 minutes")


class AgentSipIn(_Body):
    """Set or rotate an agent's SIP password (stored as HA1s only) and/or its registration setting;
    a field left out is left as it is."""

    password: str | None = Field(default=None, min_length=8, max_length=128,
                                 description="the SIP digest password of the agent's AOR (username: the agent id)")
    registration_required: bool | None = Field(
        default=None, description="login only while registered; a lapsed registration pauses it (unregistered)")


class RegisteredContact(BaseModel):
    """One live registered contact of an agent's AOR."""

    uri: str
    expires_s: int
    q: float
    instance: str | None = None
    received: str | None = Field(default=None, description="host:port the REGISTER came from")
    transport: str | None = None
    path: list[str] = Field(default_factory=list)
    edge: str | None = Field(default=None, description="the sip-edge that took the REGISTER")


class AgentSipOut(BaseModel):
    """An agent's SIP registration settings (never its password nor a hash of it) and its contacts."""

    agent_id: str
    realm: str | None = Field(description="the digest realm its password was hashed for (null: no password)")
    password_set: bool
    registration_required: bool
    contacts: list[RegisteredContact]
