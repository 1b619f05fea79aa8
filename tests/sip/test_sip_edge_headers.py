"""What the edge writes in its headers, seen by SIP peers written the way SIPp users write them.

The peers' in-dialog requests go to the edge's Contact as it stands (SIPp's [next_url]): a
display name in that Contact (sippy's default `Anonymous <sip:...>`) made them send
`ACK Anonymous <sip:...> SIP/2.0`, which the edge drops, and no call completed (issues 8, 14).
Every message the edge sends during whole calls is checked against RFC 3261's grammar
(sip_grammar.py), from SIPp's -trace_msg of each peer (here, and in the welcome-queue-agent call
of test_sip_edge_call_flows.py).

Reads: SIPp traces. Writes: nothing outside the test's temporary directory.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from sip_grammar import header_problems
from sip_harness import (
    LOOPBACK,
    EdgeUnderTest,
    ScriptedDispatcher,
    SippLauncher,
    edge_sent_problems,
    expect_success,
    free_udp_port,
)

from callcenter_sip_edge.sip_stack import SipStack
from callcenter_sip_edge.sippy.dialog import quotable_display_name


async def test_agent_hangs_up_to_a_peer_that_takes_the_contact_as_is(edge: EdgeUnderTest,
                                                                     sipp: SippLauncher) -> None:
    # the agent's BYE goes to the edge's Contact; the edge's BYE to the caller is checked too, and
    # the From of the agent's INVITE, with a name the dispatcher made from a flow's prefix
    stack, dispatcher = edge.stack, edge.dispatcher
    agent = sipp.start("agent_early_hangup_uas", name="agent")
    dispatcher.on("call_arrived", lambda f: stack.ring(f.call_id, "o1", "a1", agent.uri("agent"), 10.0,
                                                  caller_display='Sales "VIP" Ann'))
    caller = sipp.start("caller_answered_wait_bye", name="caller", remote_port=edge.port, service="support")

    await expect_success(caller, agent)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.facts[-1].data == {"by": "agent", "reason": "bye", "code": None}
    assert edge_sent_problems(caller, agent) == []
    assert 'From: "Sales \\"VIP\\" Ann" <sip:caller1@' in agent.traces()


async def test_sipp_stock_uac_scenario(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    # `sipp -sn uac` calls sip:service@edge and sends its ACK and BYE to that fixed Request-URI
    # (not to the Contact), with an addr-spec Contact; the edge matches them by dialog
    stack, dispatcher = edge.stack, edge.dispatcher
    agent = sipp.start("agent_early_uas", name="agent")
    dispatcher.on("call_arrived", lambda f: stack.ring(f.call_id, "o1", "a1", agent.uri("agent"), 10.0),
                  flow="service", caller="sipp")
    caller = sipp.start("uac", name="stock-uac", remote_port=edge.port, pause_ms=300, stock=True)

    await expect_success(caller, agent)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "agent_answered", "call_ended"]
    assert dispatcher.facts[-1].data == {"by": "caller", "reason": "bye", "code": None}
    assert edge_sent_problems(caller, agent) == []


async def test_the_contact_carries_the_advertised_host(sipp: SippLauncher, client: socket.socket) -> None:
    # an edge behind NAT: its Contact names the advertised address (the INVITE to the agent, here a
    # raw socket, is enough to see it; nothing answers, the call is dropped with the stack)
    dispatcher = ScriptedDispatcher()
    port = free_udp_port()
    stack = SipStack(host=LOOPBACK, port=port, on_fact=dispatcher.on_fact, loop=asyncio.get_running_loop(),
                     advertised_host="192.0.2.10")
    stack.start()
    try:
        agent_port = client.getsockname()[1]
        dispatcher.on("call_arrived", lambda f: stack.ring(f.call_id, "o1", "a1", f"sip:agent@{LOOPBACK}:{agent_port}",
                                                      10.0))
        sipp.start("caller_answered_bye", name="caller", remote_port=port, service="support")
        invite = (await asyncio.to_thread(client.recv, 65535)).decode()
    finally:
        stack.stop()
    assert invite.startswith(f"INVITE sip:agent@{LOOPBACK}:{agent_port} SIP/2.0\r\n")
    assert f"\r\nContact: <sip:caller1@192.0.2.10:{port}>\r\n" in invite
    assert header_problems(invite, len(invite.encode())) == []


_GOOD_200 = (
    "SIP/2.0 200 OK\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1-0;rport\r\n"
    'From: "Ann Caller" <sip:caller1@127.0.0.1:5070>;tag=1\r\n'
    "To: <sip:support@127.0.0.1:5060>;tag=abc\r\n"
    "Call-ID: 1-2@127.0.0.1\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:127.0.0.1:5060>\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: 5\r\n"
    "\r\n"
    "v=0\r\n"
)


def test_grammar_check_accepts_a_good_message() -> None:
    assert header_problems(_GOOD_200, len(_GOOD_200.encode())) == []


@pytest.mark.parametrize(("broken", "problem"), [
    (("Contact: <sip:127.0.0.1:5060>", "Contact: Anonymous <sip:127.0.0.1:5060>"), "display name"),
    (("Contact: <sip:127.0.0.1:5060>", "Contact: sip:127.0.0.1:5060"), "display name"),
    (("From: \"Ann Caller\" <", "From: Ann, Caller <"), "from:"),
    (("To: <sip:support@127.0.0.1:5060>;tag=abc", "To: <sip:support@127.0.0.1:5060;tag=abc"), "to:"),
    (("To: <sip:support@127.0.0.1:5060>;tag=abc", "To: <sip:support@127.0.0.1:5060>"), "to without a tag"),
    (("branch=z9hG4bK-1-0", "branch=1-0"), "z9hG4bK"),
    (("CSeq: 1 INVITE\r\n", "CSeq: 1 INVITE\r\nCSeq: 2 INVITE\r\n"), "cseq appears 2 times"),
    (("Content-Length: 5", "Content-Length: 7"), "content-length 7 for a body of 5 bytes"),
    (("Call-ID: 1-2@127.0.0.1", "Call-ID: 1 2"), "call-id"),
])
def test_grammar_check_finds_what_breaks_rfc3261(broken: tuple[str, str], problem: str) -> None:
    text = _GOOD_200.replace(*broken)
    assert any(problem in p for p in header_problems(text, len(text.encode()))), header_problems(
        text, len(text.encode()))


def test_grammar_check_of_requests() -> None:
    bye = ("BYE Anonymous <sip:127.0.0.1:5060> SIP/2.0\r\n" + _GOOD_200.split("\r\n", 1)[1]
           .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE").replace("Content-Length: 5", "Content-Length: 0")
           .replace("v=0\r\n", ""))
    problems = header_problems(bye, len(bye.encode()))
    assert "start line: 'BYE Anonymous <sip:127.0.0.1:5060> SIP/2.0'" in problems
    assert "max-forwards missing in a request" in problems
    good_bye = bye.replace("BYE Anonymous <sip:127.0.0.1:5060>", "BYE sip:127.0.0.1:5060").replace(
        "2 INVITE", "2 BYE").replace("Content-Type: application/sdp\r\n", "Max-Forwards: 70\r\n")
    assert header_problems(good_bye, len(good_bye.encode())) == []


@pytest.mark.parametrize(("name", "quotable"), [
    ('Sales "VIP" Ann', 'Sales \\"VIP\\" Ann'),
    ('Ann \\"the boss\\"', 'Ann \\"the boss\\"'),   # from a caller's From: already escaped
    ("C:\\", "C:\\\\"),                             # a trailing backslash would escape the quote
    ("two\r\nlines", "twolines"),
    ("Ann", "Ann"),
    (None, None),
])
def test_display_names_are_given_to_sippy_quotable(name: str | None, quotable: str | None) -> None:
    assert quotable_display_name(name) == quotable
