"""Every command the edge receives ends in a report: done (the usual reports) or `command_refused`.

Each test puts a call in a state where some commands cannot be carried out (a media leg being set
up, an agent ringing, ring-all forks ringing, caller and agent talking, the call gone), sends every
command there with SipStack, and checks that each one the edge cannot carry out comes back as a
`command_refused` fact with its command type, offer id and reason, and that the call itself is
untouched by the refusals (its peers, SIPp, still complete their scenario).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sip_harness import EdgeUnderTest, SippLauncher, expect_success

from callcenter_sip_edge.sip_stack import SipStack

NOWHERE = "sip:nobody@127.0.0.1:9"


def _refusals(edge: EdgeUnderTest) -> list[dict[str, Any]]:
    return [f.data for f in edge.dispatcher.facts if f.kind == "command_refused"]


def _refused(command: str, reason: str, offer_id: str | None = None, purpose: str | None = None) -> dict[str, Any]:
    refused = {"command": command, "offer_id": offer_id, "reason": reason}
    return refused if purpose is None else {**refused, "purpose": purpose}


def _every_other_command(stack: SipStack, call_id: str, tag: str) -> list[dict[str, Any]]:
    """ring, ring_all, media and cancel_ring of offers the call does not have: the refusals due in a
    state where the call is busy with a leg (media pending, agent ringing or talking, forks)."""
    stack.ring(call_id, f"{tag}-ring", "a9", NOWHERE, 5.0)
    stack.ring_all(call_id, f"{tag}-all", [{"agent_id": "a9", "uri": NOWHERE}], 5.0)
    stack.media(call_id, NOWHERE, "queue")
    stack.cancel_ring(call_id, f"{tag}-other")
    return [_refused("command.ring", "wrong_state", f"{tag}-ring"),
            _refused("command.ring_all", "wrong_state", f"{tag}-all"),
            _refused("command.media", "wrong_state", purpose="queue"),
            _refused("command.cancel_ring", "wrong_state", f"{tag}-other")]


async def _wait_refusals(edge: EdgeUnderTest, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The refusals once there are `count` of them (or whatever came within `timeout_s`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(_refusals(edge)) < count and loop.time() < deadline:
        await asyncio.sleep(0.02)
    return _refusals(edge)


async def test_ring_while_the_queue_leg_is_set_up_is_refused(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    """B5: the welcome leg failed and the queue leg is still being set up (the caller is not
    answered): `ring` used to be dropped silently, leaving the agent ringing for the lease."""
    stack, dispatcher = edge.stack, edge.dispatcher
    queue = sipp.start("agent_noanswer_uas", name="queue")   # rings, answers nothing: the leg stays pending
    caller = sipp.start("caller_rejected_404", name="caller", remote_port=edge.port, service="support")
    call_id = (await dispatcher.wait_for("call_arrived")).call_id
    stack.media(call_id, queue.uri("queue"), "queue")
    expected = _every_other_command(stack, call_id, "p")
    stack.media(call_id, NOWHERE, "not-a-purpose")
    expected.append(_refused("command.media", "bad_purpose", purpose="not-a-purpose"))
    assert await _wait_refusals(edge, len(expected)) == expected
    stack.reject(call_id, 404, "done")

    await expect_success(caller, queue)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", *["command_refused"] * len(expected), "call_ended"]


@pytest.mark.parametrize("ring_all", [False, True], ids=["one_agent", "ring_all"])
async def test_commands_while_agents_ring_are_refused(edge: EdgeUnderTest, sipp: SippLauncher,
                                                      ring_all: bool) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    agent = sipp.start("agent_noanswer_uas", name="agent")
    caller = sipp.start("caller_rejected_404", name="caller", remote_port=edge.port, service="support")
    call_id = (await dispatcher.wait_for("call_arrived")).call_id
    if ring_all:
        stack.ring_all(call_id, "o1", [{"agent_id": "a1", "uri": agent.uri("agent")}], 10.0)
    else:
        stack.ring(call_id, "o1", "a1", agent.uri("agent"), 10.0)
    expected = _every_other_command(stack, call_id, "r")
    assert await _wait_refusals(edge, len(expected)) == expected
    stack.cancel_ring(call_id, "o1")   # the ringing offer itself is cancelled: done, as agent_failed
    failed = await dispatcher.wait_for("agent_failed")
    assert failed.data["reason"] == "cancelled"
    stack.reject(call_id, 404, "done")

    await expect_success(caller, agent)
    await dispatcher.wait_for("call_ended")
    assert len(_refusals(edge)) == len(expected)


async def test_commands_while_caller_and_agent_talk_are_refused(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    agent = sipp.start("agent_early_uas", name="agent")
    caller = sipp.start("caller_answered_wait_bye", name="caller", remote_port=edge.port, service="support")
    call_id = (await dispatcher.wait_for("call_arrived")).call_id
    stack.ring(call_id, "o1", "a1", agent.uri("agent"), 10.0)
    await dispatcher.wait_for("agent_answered")
    expected = _every_other_command(stack, call_id, "t")
    stack.cancel_ring(call_id, "o1")    # answered: no longer cancellable
    expected.append(_refused("command.cancel_ring", "wrong_state", "o1"))
    assert await _wait_refusals(edge, len(expected)) == expected
    stack.hangup(call_id, "done")

    await expect_success(caller, agent)
    ended = await dispatcher.wait_for("call_ended")
    assert ended.data["by"] == "edge"


async def test_ring_all_without_targets_is_refused(edge: EdgeUnderTest, sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    caller = sipp.start("caller_rejected_404", name="caller", remote_port=edge.port, service="support")
    call_id = (await dispatcher.wait_for("call_arrived")).call_id
    stack.ring_all(call_id, "o1", [], 10.0)
    assert await _wait_refusals(edge, 1) == [_refused("command.ring_all", "no_targets", "o1")]
    stack.reject(call_id, 404, "done")
    await expect_success(caller)
    await dispatcher.wait_for("call_ended")


async def test_every_command_for_a_call_the_edge_does_not_know_is_refused(edge: EdgeUnderTest,
                                                                          sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    caller = sipp.start("caller_rejected_404", name="caller", remote_port=edge.port, service="support")
    call_id = (await dispatcher.wait_for("call_arrived")).call_id
    stack.reject(call_id, 404, "done")
    await expect_success(caller)
    await dispatcher.wait_for("call_ended")
    expected = []
    for target in (call_id, "never-existed"):   # ended and forgotten, or never known
        stack.media(target, NOWHERE, "queue")
        stack.ring(target, "o2", "a1", NOWHERE, 5.0)
        stack.ring_all(target, "o3", [{"agent_id": "a1", "uri": NOWHERE}], 5.0)
        stack.cancel_ring(target, "o2")
        stack.reject(target, 404, "again")
        stack.hangup(target, "again")
        expected += [_refused("command.media", "unknown_call", purpose="queue"),
                     _refused("command.ring", "unknown_call", "o2"),
                     _refused("command.ring_all", "unknown_call", "o3"),
                     _refused("command.cancel_ring", "unknown_call", "o2"),
                     _refused("command.reject", "unknown_call"), _refused("command.hangup", "unknown_call")]
    assert await _wait_refusals(edge, len(expected)) == expected
    refused = [f for f in dispatcher.facts if f.kind == "command_refused"]
    assert [f.call_id for f in refused] == [call_id] * 6 + ["never-existed"] * 6
    assert stack.active_calls() == 0
