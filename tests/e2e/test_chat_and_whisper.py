"""Chats and the flow-id message, whole system: SIPp caller, media servers and agents against a private
redis-server, the real dispatcher, api, cdr-writer (SQLite) and sip-edge.

- A chat (the caller's offer is MSRP) plays the welcome, waits in the queue, and goes to the agent's
  chat URI; an audio-only agent of the same skill, free the whole time, is never rung for it. Every
  MSRP offer and answer is checked by the SIPp scenarios; the CDR says chat.
- A flow with a flow-id message: the agent logged in for the waiting call answers, hears the message
  (its offer goes to the message's media server), and only when that server hangs up is the caller
  connected to the agent; the caller heard the queue media until then.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_harness import flow, messages, ok, queued_call, sip, start, types, whole_system

from callcenter_dev.sipp import Sipp
from callcenter_dev.system import WholeSystem, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    yield from whole_system(tmp_path_factory, "chat", 5)


def put_agent(system: WholeSystem, agent_id: str, skill: str, **fields: str | int) -> None:
    r = system.api.put(f"/v1/agents/{agent_id}", json={"skills": [skill], **fields})
    assert r.status_code in (200, 201), r.text


def test_a_chat_waits_in_the_queue_and_reaches_the_chat_agent_never_the_audio_one(
        system: WholeSystem, peers: list[Sipp]) -> None:
    f = "chat-line"
    welcome = start(peers, Sipp(sip("media_welcome_chat_uas.xml")))
    queue = start(peers, Sipp(sip("media_queue_chat_late_uas.xml")))
    chat_phone = start(peers, Sipp(sip("agent_chat_late_uas.xml")), trace_msg=True)
    audio_phone = start(peers, Sipp(sip("agent_noanswer_uas.xml")))  # would ring forever if offered
    flow(system, f, queue, welcome_uri=f"sip:welcome@{welcome.uri_host}")
    put_agent(system, "talker", f, uri=f"sip:talker@{audio_phone.uri_host}")
    put_agent(system, "chatter", f, chat_uri=f"sip:chatter@{chat_phone.uri_host}", chat_capacity=2)
    system.login("talker")  # logged in and free: the call is not rejected, but a chat is not for it

    c, call_id = queued_call(system, peers, "caller_chat_reinvited_2_bye.xml", f, 1000)
    assert system.agent_state("talker") == "free"
    queue_view = next(q for q in system.api.get("/v1/queues").json() if q["flow_id"] == f)
    assert (queue_view["waiting"], queue_view["chats_waiting"], queue_view["chats"]) == (0, 1, [call_id])
    assert system.api.get(f"/v1/calls/{call_id}").json()["media_type"] == "chat"
    r = system.api.post("/v1/agents/chatter/login")
    assert r.status_code == 200 and r.json()["state"] == "in_chat", r.text  # the chat at once, in one step

    ok(c, system)
    ok(chat_phone, system)
    ok(queue, system)
    ok(welcome, system)
    cdr = system.wait_for_cdr(call_id)
    assert (cdr["outcome"], cdr["agent_id"], cdr["media_type"]) == ("answered", "chatter", "chat"), cdr
    assert types(system, call_id) == ["call.arrived", "call.welcome_ended", "call.queued", "call.offered",
                                      "call.connected", "call.ended"], types(system, call_id)
    arrived = next(d for t, d in system.events(call_id) if t == "call.arrived")
    assert arrived["media_type"] == "chat"
    assert "m=message" in messages(chat_phone) and "TCP/MSRP" in messages(chat_phone)
    assert "INVITE" not in audio_phone.scenario_log()
    states = [(d["from"], d["to"], d.get("chats")) for t, d in system.events()
              if t == "agent.state_changed" and d["agent_id"] == "chatter"]
    assert states[:2] == [("logged_out", "free", None), ("free", "in_chat", 1)], states
    wait_for(lambda: system.agent_state("chatter") == "free", 5, "the chat agent free after its wrap-up", system)
    stats = system.api.get("/v1/stats").json()
    flow_stats = next(s for s in stats["flows"] if s["flow_id"] == f)
    assert (flow_stats["answered"], flow_stats["answered_chats"], flow_stats["onhold_chats"]) == (1, 1, 0)
    for agent_id in ("talker", "chatter"):
        assert system.api.post(f"/v1/agents/{agent_id}/logout").status_code == 200


def test_the_agent_hears_the_flow_id_message_before_the_caller_is_connected(
        system: WholeSystem, peers: list[Sipp]) -> None:
    f = "whispered"
    music = start(peers, Sipp(sip("media_hold_uas.xml")), trace_msg=True)
    whisper = start(peers, Sipp(sip("whisper_media_uas.xml")), trace_msg=True)
    phone = start(peers, Sipp(sip("agent_whisper_uas.xml")), trace_msg=True)
    flow(system, f, f"sip:queue@{music.uri_host}", flow_id_uri=f"sip:flowid@{whisper.uri_host};flow={f}")
    put_agent(system, "w-agent", f, uri=f"sip:w-agent@{phone.uri_host}")
    put_agent(system, "w-paused", f, uri="sip:w-paused@127.0.0.1:9")
    system.login("w-paused")  # logged in (the call is not rejected) but paused: it gets no call
    assert system.api.post("/v1/agents/w-paused/pause", json={"reason": "training"}).status_code == 200

    c, call_id = queued_call(system, peers, "caller_whisper_reinvited_bye.xml", f, 800, trace_msg=True)
    system.login("w-agent")

    ok(c, system)
    ok(phone, system)
    ok(whisper, system)
    ok(music, system)
    cdr = system.wait_for_cdr(call_id)
    assert (cdr["outcome"], cdr["agent_id"], cdr["media_type"]) == ("answered", "w-agent", "audio"), cdr
    ring = [d for t, d in system.events(call_id) if t == "call.offered"]
    assert len(ring) == 1 and ring[0]["agent_id"] == "w-agent"
    # the scenarios checked the SDP of each step (the message server got the agent's offer, the
    # caller got the agent's second offer after the message); here: the message ended before the
    # caller's re-INVITE, and the agent's talk started only then
    assert "s=agent-offer-1" in messages(whisper) and "s=agent-offer-2" in messages(c)
    assert "BYE" in messages(whisper)
    connected = next(d for t, d in system.events(call_id) if t == "call.connected")
    offered = next(d for t, d in system.events(call_id) if t == "call.offered")
    assert connected["ts"] - offered["ts"] >= 500, "connected only after the message (it lasts 1 s)"
    for agent_id in ("w-agent", "w-paused"):
        assert system.api.post(f"/v1/agents/{agent_id}/logout").status_code == 200
