"""REGISTER in sippy's turns: what a request asks, the answers that need no Redis, and the reply.

Reads: REGISTER requests (from `CallRouter`). Writes: 400/403/404/423/503 and digest challenges
(401) at once; a `RegisterRequest` to the asyncio side (`registrations.py`) for a request with
credentials, whose `Reply` comes back to `answer` on this thread.

An AOR is `sip:<agent-id>@<domain>` (To's URI); `CC_SIP_REGISTRAR_DOMAINS` lists the domains taken
(empty: any). Each contact's expiry is its `expires=`, else the Expires header, else the default,
capped at the maximum; one under the minimum (and not 0) gets 423 with Min-Expires (RFC 3261 10.3).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from callcenter_sip_edge.digest import Nonces, challenge
from callcenter_sip_edge.guard import SourceGuard
from callcenter_sip_edge.log_limits import RateLimitedLog
from callcenter_sip_edge.sippy import deferred, transport

AGENT_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
MAX_CONTACT_HEADERS = 20
MAX_PATH_HEADERS = 5


@dataclass(frozen=True)
class RegistrarOptions:
    """The registrar's settings (`EdgeSettings.sip_register_*`)."""

    realm: str = "callcenter"
    domains: frozenset[str] = frozenset()
    min_expires_s: int = 60
    max_expires_s: int = 3600
    default_expires_s: int = 600
    max_contacts: int = 5
    max_registrations: int = 10_000
    nonce_secret: bytes | None = None
    nonce_ttl_s: int = 300
    algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    rate: float = 10.0
    burst: int = 40
    failures_per_minute: int = 10

    @classmethod
    def from_settings(cls, s: Any) -> RegistrarOptions:
        secret = s.sip_register_nonce_secret
        return cls(realm=s.sip_realm, domains=frozenset(d.strip().lower() for d in s.sip_registrar_domains.split(",")
                                                         if d.strip()),
                   min_expires_s=s.sip_register_min_expires_s, max_expires_s=s.sip_register_max_expires_s,
                   default_expires_s=s.sip_register_default_expires_s, max_contacts=s.sip_register_max_contacts,
                   max_registrations=s.sip_register_max_registrations,
                   nonce_secret=secret.get_secret_value().encode() if secret is not None else None,
                   nonce_ttl_s=s.sip_register_nonce_ttl_s,
                   algorithms=tuple(a.strip() for a in s.sip_register_algorithms.split(",") if a.strip()),
                   rate=s.sip_register_rate, burst=s.sip_register_burst,
                   failures_per_minute=s.sip_register_failures_per_minute)


@dataclass(frozen=True)
class ContactSpec:
    """One Contact of a REGISTER: the key its binding is kept under, and how long it lives (0: removed)."""

    key: str
    uri: str
    expires_s: int
    q: str | None = None
    instance: str | None = None


@dataclass(frozen=True)
class RegisterRequest:
    """What the asyncio side needs of one REGISTER with credentials."""

    agent_id: str
    authorization: str
    call_id: str
    cseq: int
    contacts: tuple[ContactSpec, ...]
    remove_all: bool
    source: tuple[str, int]
    transport: str
    path: tuple[str, ...] = ()
    method: str = "REGISTER"


@dataclass(frozen=True)
class Reply:
    """A final response to a REGISTER: code, phrase and extra headers (name, value) in order."""

    code: int
    phrase: str
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)


class _Refused(Exception):
    def __init__(self, reply: Reply, cause: str) -> None:
        super().__init__(cause)
        self.reply = reply
        self.cause = cause


Submit = Callable[[RegisterRequest, Callable[[Reply], None]], None]


@dataclass(frozen=True)
class RegistrarSetup:
    """What the SIP stack needs to take REGISTERs: the options, the nonces (shared with the side that
    verifies them) and where a request with credentials goes."""

    options: RegistrarOptions
    nonces: Nonces
    submit: Submit


class Registrar:
    """REGISTER requests in sippy's turns; `submit` hands one with credentials to the asyncio side
    with the function that answers it (called there, it must bring the reply back to this thread)."""

    def __init__(self, options: RegistrarOptions, nonces: Nonces, submit: Submit, sip_config: Any,
                 limited_log: RateLimitedLog) -> None:
        self.options = options
        self.nonces = nonces
        self._submit = submit
        self._sip_config = sip_config
        self._log = limited_log
        self._per_source = SourceGuard(rate=options.rate, burst=options.burst)

    def receive(self, req: Any, sip_t: Any) -> Any:
        source = (str(req.getSource()[0]).strip("[]"), int(req.getSource()[1]))
        try:
            limited = self._per_source.take_token(source[0], transport.arrival_time(req))
            if limited is not None:
                raise _Refused(Reply(503, "Service Unavailable", (("retry-after", str(limited.retry_after_s)),)),
                               "rate_limited")
            request = self._read(req, source, deferred.arrival_transport(sip_t))
        except _Refused as refused:
            self._log.emit("info", "sip.register_refused", refused.cause, reason=refused.cause, source=source[0],
                           code=refused.reply.code)
            return (_response(req, refused.reply), None, None)
        if not request.authorization:
            return (_response(req, self.challenge()), None, None)

        def reply(answer: Reply) -> None:
            deferred.respond(self._sip_config, _response(req, answer), sip_t)

        self._submit(request, reply)
        return deferred.NO_ANSWER_YET

    def challenge(self) -> Reply:
        return challenge_reply(self.options, self.nonces)

    def _read(self, req: Any, source: tuple[str, int], arrived_by: str) -> RegisterRequest:
        opts = self.options
        try:
            to = req.getHFBody("to").getUrl()
            agent_id, domain = str(to.username or ""), str(to.host or "").lower()
            call_id = str(req.getHFBody("call-id"))
            cseq = int(req.getHFBody("cseq").getCSeqNum())
            header_expires = req.getHFBody("expires").getNum() if req.countHFs("expires") else None
            contact_hfs = req.getHFs("contact")
            path = tuple(str(hf.getBody()) for hf in req.getHFs("path"))
            authorization = str(req.getHFBody("authorization").body) if req.countHFs("authorization") else ""
        except Exception as exc:
            raise _Refused(Reply(400, "Bad Request"), "unparsable") from exc
        if opts.domains and domain not in opts.domains:
            raise _Refused(Reply(404, "Not Found"), "unknown_domain")
        if not AGENT_ID.fullmatch(agent_id):
            raise _Refused(Reply(404, "Not Found"), "bad_aor")
        if len(contact_hfs) > MAX_CONTACT_HEADERS or len(path) > MAX_PATH_HEADERS:
            raise _Refused(Reply(403, "Forbidden - Too Many Contacts"), "too_many_contacts")
        contacts: list[ContactSpec] = []
        remove_all = False
        for hf in contact_hfs:
            body = hf.getBody()
            if body.asterisk:
                if header_expires != 0 or len(contact_hfs) != 1:
                    raise _Refused(Reply(400, "Bad Request - Contact * needs Expires: 0"), "bad_star")
                remove_all = True
                continue
            contacts.append(self._contact(body, header_expires))
        if len(contacts) > opts.max_contacts:
            raise _Refused(Reply(403, "Forbidden - Too Many Contacts"), "too_many_contacts")
        return RegisterRequest(agent_id=agent_id, authorization=authorization, call_id=call_id, cseq=cseq,
                               contacts=tuple(contacts), remove_all=remove_all, source=source,
                               transport=arrived_by, path=path)

    def _contact(self, body: Any, header_expires: int | None) -> ContactSpec:
        opts = self.options
        try:
            address = body.address
            uri = str(body.getUrl())
            raw_expires = address.getParam("expires")
            q, instance = address.getParam("q"), address.getParam("+sip.instance")
            expires = int(raw_expires) if raw_expires is not None else header_expires
        except Exception as exc:
            raise _Refused(Reply(400, "Bad Request - Contact"), "bad_contact") from exc
        if expires is None:
            expires = opts.default_expires_s
        if expires < 0:
            raise _Refused(Reply(400, "Bad Request - Expires"), "bad_expires")
        if 0 < expires < opts.min_expires_s:
            raise _Refused(Reply(423, "Interval Too Brief", (("min-expires", str(opts.min_expires_s)),)),
                           "interval_too_brief")
        instance = instance.strip('"') if instance else None
        return ContactSpec(key=instance or uri, uri=uri, expires_s=min(expires, opts.max_expires_s), q=q,
                           instance=instance)


def challenge_reply(options: RegistrarOptions, nonces: Nonces, stale: bool = False) -> Reply:
    """401 with a fresh nonce, one WWW-Authenticate per algorithm."""
    values = challenge(options.realm, nonces.issue(), options.algorithms, stale=stale)
    return Reply(401, "Unauthorized", tuple(("www-authenticate", value) for value in values))


def _response(req: Any, reply: Reply) -> Any:
    # sippy imported here, so that the asyncio side may import this module
    from sippy.SipGenericHF import SipGenericHF
    from sippy.SipHeader import SipHeader

    resp = req.genResponse(reply.code, reply.phrase)
    for name, value in reply.headers:
        resp.appendHeader(SipHeader(name=name, body=SipGenericHF(value, name)))
    if reply.code == 200:
        resp.appendHeader(SipHeader(name="date", body=SipGenericHF(
            time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()), "date")))
    return resp
