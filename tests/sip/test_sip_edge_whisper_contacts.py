"""The flow-id message ("whisper") for an agent that registered several contacts.

A `command.ring` to an AOR with a `whisper_uri` forks to every live contact (`Forks`, one agent);
the contact that answers hears the message before it meets the caller, exactly as a single agent
URI does (test_sip_edge_whisper.py), and the other contact gets a CANCEL. SIPp plays the desk phone
(answers, hears the message, is re-INVITEd), the mobile (rings, never answers), the message's media
server, the queue media and the caller; the bindings come from REGISTERs to the edge's registrar
(a real redis-server).
"""

from __future__ import annotations

from typing import Any

from registrar_harness import DOMAIN, RegisterClient
from sip_harness import SippLauncher, expect_success
from test_sip_edge_registrar import PASSWORD, RegistrarEdge, make_registrar, registrar  # noqa: F401 (fixtures)

from callcenter.contract.commands import Ring


async def _register(edge_port: int, contact_port: int) -> None:
    client = RegisterClient(edge_port, "a1", PASSWORD)
    try:
        answer = await client.register(contact=f"<sip:a1@127.0.0.1:{contact_port}>")
    finally:
        client.close()
    assert answer.code == 200, answer


async def test_the_contact_that_answers_hears_the_flow_id_message(registrar: RegistrarEdge,  # noqa: F811
                                                                   sipp: SippLauncher) -> None:
    edge = registrar.edge
    stack, dispatcher = edge.stack, edge.dispatcher
    music = sipp.start("media_hold_uas", name="queue-music")
    desk = sipp.start("agent_whisper_uas", name="desk")
    mobile = sipp.start("agent_noanswer_uas", name="mobile")
    whisper = sipp.start("whisper_media_uas", name="whisper")
    for port in (desk.port, mobile.port):
        await _register(edge.port, port)
    found = await registrar.regs.bindings("a1") or []
    assert len(found) == 2

    def ring(fact: Any) -> None:
        stack.ring_registered(Ring(call_id=fact.call_id, offer_id="o1", agent_id="a1", uri=f"sip:a1@{DOMAIN}",
                                   timeout_s=10.0, whisper_uri=whisper.uri("flowid", ";flow=support")),
                              [b.target() for b in found])

    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"))
    dispatcher.on("media_answered", ring)
    caller = sipp.start("caller_whisper_reinvited_bye", name="caller", remote_port=edge.port, service="support",
                        pause_ms=500)

    # agent_whisper_uas checks its ACK carries the message's answer and that it is re-INVITEd
    # without SDP afterwards; whisper_media_uas checks it got the agent's offer
    await expect_success(caller, music, desk, mobile, whisper)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "media_answered", "agent_answered", "call_ended"]
    assert dispatcher.facts[2].data == {"offer_id": "o1", "agent_id": "a1"}
    whisper_invites = [m for m in whisper.messages() if not m.sent and m.is_request("INVITE")]
    assert len(whisper_invites) == 1 and "s=agent-offer-1" in whisper_invites[0].body
    assert "CANCEL sip:a1@127.0.0.1" in mobile.traces()
    assert not any(m.is_request("INVITE") for m in mobile.messages() if not m.sent and "m=audio" in m.body), (
        "the contacts were rung without SDP (the caller was on the queue media), as a single agent is")
    assert stack.active_calls() == 0


async def test_whisper_is_skipped_for_contacts_rung_before_the_caller_is_answered(
        registrar: RegistrarEdge, sipp: SippLauncher) -> None:  # noqa: F811
    edge = registrar.edge
    stack, dispatcher = edge.stack, edge.dispatcher
    desk = sipp.start("agent_early_uas", name="desk")
    mobile = sipp.start("agent_noanswer_uas", name="mobile")
    for port in (desk.port, mobile.port):
        await _register(edge.port, port)
    found = await registrar.regs.bindings("a1") or []
    # the caller is still unanswered: its offer goes to the contacts, there is nothing to hold it on
    dispatcher.on("call_arrived", lambda f: stack.ring_registered(
        Ring(call_id=f.call_id, offer_id="o1", agent_id="a1", uri=f"sip:a1@{DOMAIN}", timeout_s=10.0,
             whisper_uri="sip:flowid@127.0.0.1:9"), [b.target() for b in found]))
    caller = sipp.start("caller_answered_bye", name="caller", remote_port=edge.port, service="support",
                        pause_ms=500)
    await expect_success(caller, desk, mobile)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "agent_answered", "call_ended"]
    assert stack.active_calls() == 0
