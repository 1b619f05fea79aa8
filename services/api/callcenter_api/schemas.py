"""Request and response bodies of the api (pydantic). Reads and writes nothing itself.

Ids and skills are restricted to `[A-Za-z0-9_.-]`: they become parts of Redis keys and of the
comma-separated skill lists the Lua scripts split, so `:`, `,`, `|` and spaces must never appear.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

FLOW_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
AGENT_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"
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
    # a misspelt field is an error, not a silently ignored value
    model_config = ConfigDict(extra="forbid")


# -- flows -----------------------------------------------------------------------------------------

class FlowIn(_Body):
    skill: Skill
    priority: int = Field(default=256, ge=0, le=1_000_000, description="0 is the highest priority")
    welcome_uri: SipUri | None = None
    queue_uri: SipUri
    dissuading_uri: SipUri | None = None
    prepend_cid: str | None = Field(default=None, max_length=32)
    max_wrapup_s: int = Field(default=0, ge=0, le=86_400, description="cap on the agents' wrap-up; 0 = none")


class FlowOut(BaseModel):
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
    created_at: datetime
    updated_at: datetime


# -- agents ----------------------------------------------------------------------------------------

def _dedupe(skills: list[str]) -> list[str]:
    return list(dict.fromkeys(skills))


class AgentIn(_Body):
    uri: SipUri
    skills: Annotated[list[Skill], Field(min_length=1, max_length=64), AfterValidator(_dedupe)]
    wrapup_s: int | None = Field(default=None, ge=0, le=86_400, description="null = the global wrap-up time")


class AgentLive(BaseModel):
    """The agent's runtime state in Redis (the agent hash); `fields` holds every raw field."""

    state: str
    call: str | None = None
    logout_pending: bool = False
    state_since_ms: int | None = None
    idle_since_ms: int | None = None
    logged_in_ms: int | None = None
    wrapup_end_ms: int | None = None
    fields: dict[str, str] = Field(default_factory=dict)


class AgentOut(BaseModel):
    id: str
    uri: str
    skills: list[str]
    wrapup_s: int | None
    state: str = Field(description="live state (logged_out, free, ringing, in_call, wrap_up); same as live.state")
    created_at: datetime
    updated_at: datetime
    live: AgentLive | None = Field(default=None, description="null when the agent is not in the Redis cache")


class LoginOut(BaseModel):
    agent_id: str
    state: str = Field(description="free, ringing (a waiting call was handed over at once), in_call, wrap_up")
    already: bool = False


class LogoutOut(BaseModel):
    agent_id: str
    state: Literal["logged_out", "pending"] = Field(
        description="pending: the agent is ringing or in a call; it is logged out when that call ends")
    already: bool = False


# -- live views ------------------------------------------------------------------------------------

class CallOut(BaseModel):
    call_id: str
    state: str
    flow: str
    caller: str
    agent_id: str | None = None
    edge: str | None = None
    received_ms: int | None = None
    fields: dict[str, str] = Field(default_factory=dict, description="the raw call hash")


class QueueOut(BaseModel):
    flow_id: str
    skill: str
    priority: int
    waiting: int
    calls: list[str] = Field(description="waiting call ids, next served first (at most `limit`)")


# -- CDRs ------------------------------------------------------------------------------------------

class CdrOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    call_id: str
    flow_id: str
    caller: str
    agent_id: str | None
    received_at: datetime
    wait_ms: int
    pickup_ms: int
    talk_ms: int
    outcome: str
    ended_by: str
    reason: str
    rejections: int
    event_id: str


class CdrPage(BaseModel):
    items: list[CdrOut]
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page; null on the last page")


class ReloadOut(BaseModel):
    flows: int
    agents: int
    removed_flows: list[str] = Field(default_factory=list)
    removed_agents: list[str] = Field(default_factory=list)
    kept: list[str] = Field(default_factory=list, description="cache entries not in SQL that could not be "
                                                          "removed (calls waiting, agent logged in)")
