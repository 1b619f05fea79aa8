"""Every header name the edge writes is spelled as the RFC that defines it spells it.

Header names are case-insensitive (RFC 3261 7.3.1), but peers that match them case-sensitively
(SIPp's `[last_Session-Expires:]`, its regexp checks, SBC header rules) miss `Www-authenticate`
or `Session-expires`, which sippy used to write. Seen from the peers (SIPp's -trace_msg, the raw
response to a REGISTER): every message the edge sent in a call with session timers and its
refreshes (caller and agent legs, UPDATE, 2xx, BYE), and the registrar's 401 challenge, 200 and 423.
The reference below is typed from the RFCs, not taken from the edge's table: a name missing from
it fails too, so a header new in the edge comes with its RFC's spelling.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from registrar_harness import RegisterClient, provision
from sip_harness import EdgeUnderTest, SippLauncher, expect_success
from test_sip_edge_registrar import PASSWORD, RegistrarEdge, make_registrar  # noqa: F401 (a fixture)

from callcenter_sip_edge.session_options import SessionTimerOptions

# name -> where it is defined; the spelling is the RFC's
RFC_SPELLING = {
    "Via": "RFC 3261", "From": "RFC 3261", "To": "RFC 3261", "Call-ID": "RFC 3261", "CSeq": "RFC 3261",
    "Contact": "RFC 3261", "Max-Forwards": "RFC 3261", "Content-Type": "RFC 3261",
    "Content-Length": "RFC 3261", "Record-Route": "RFC 3261", "Route": "RFC 3261", "Allow": "RFC 3261",
    "Supported": "RFC 3261", "Require": "RFC 3261", "Server": "RFC 3261", "User-Agent": "RFC 3261",
    "Expires": "RFC 3261", "Min-Expires": "RFC 3261", "WWW-Authenticate": "RFC 3261",
    "Retry-After": "RFC 3261", "Warning": "RFC 3261", "Date": "RFC 3261", "Unsupported": "RFC 3261",
    "Session-Expires": "RFC 4028", "Min-SE": "RFC 4028", "Path": "RFC 3327", "Reason": "RFC 3326",
    "P-Asserted-Identity": "RFC 3325", "Allow-Events": "RFC 6665",
}
_BY_LOWER = {name.lower(): name for name in RFC_SPELLING}
_HEADER_LINE = re.compile(r"^([A-Za-z0-9!%*_+`'~.-]+)[ \t]*:")


def misspelled(names: list[str]) -> list[str]:
    """The names of `names` not spelled as their RFC does (or in no RFC we know)."""
    return sorted({name for name in names if _BY_LOWER.get(name.lower()) != name})


def header_names(text: str) -> list[str]:
    head = text.replace("\r\n", "\n").split("\n\n", 1)[0].split("\n")[1:]
    return [m.group(1) for line in head if (m := _HEADER_LINE.match(line.strip()))]


async def test_a_call_with_session_refreshes_is_written_with_the_rfc_spelling(
        make_edge: Callable[..., EdgeUnderTest], sipp: SippLauncher) -> None:
    edge = make_edge(session_timers=SessionTimerOptions(expires_s=4, min_se_s=2, short_for_tests=True))
    stack, dispatcher = edge.stack, edge.dispatcher
    agent = sipp.start("agent_timer_uas", name="agent")
    dispatcher.on("call_arrived", lambda f: stack.ring(f.call_id, "o1", "a1", agent.uri("agent"), 10.0))
    caller = sipp.start("caller_timer_refreshed_bye", name="caller", remote_port=edge.port, service="support",
                        pause_ms=0)
    await expect_success(caller, agent)
    await dispatcher.wait_for("call_ended")

    from_edge = [m for peer in (caller, agent) for m in peer.messages() if not m.sent]
    kinds = {m.start_line.split(" ")[0] if not m.start_line.startswith("SIP/") else m.start_line[:11]
             for m in from_edge}
    # the call's requests and responses, and the refreshes, all seen
    assert {"INVITE", "UPDATE", "BYE", "ACK", "SIP/2.0 200"} <= kinds, kinds
    names = [name for m in from_edge for name in header_names(m.text)]
    assert {"Session-Expires", "Min-SE", "Require", "Supported"} <= set(names)
    assert misspelled(names) == []


async def test_the_registrars_answers_are_written_with_the_rfc_spelling(
        make_registrar: Callable[..., RegistrarEdge]) -> None:  # noqa: F811
    edge = make_registrar(min_expires_s=60)
    await provision(edge.store, "a1", PASSWORD)
    client = RegisterClient(edge.port, "a1", PASSWORD)
    contact = "<sip:a1@127.0.0.1:5999>"
    try:
        challenge = await client.send(client.request(contact=contact))
        assert challenge.code == 401, challenge
        ok = await client.send(client.request(
            contact=contact, authorization=client.authorization(challenge.first("WWW-Authenticate") or "")))
        assert ok.code == 200, ok
        too_brief = await client.send(client.request(contact=contact, expires=30))
        assert too_brief.code == 423, too_brief
    finally:
        client.close()
    names = {answer.code: [name for name, _ in answer.headers] for answer in (challenge, ok, too_brief)}
    assert "WWW-Authenticate" in names[401] and "Min-Expires" in names[423], names
    assert {code: misspelled(found) for code, found in names.items()} == {401: [], 200: [], 423: []}
