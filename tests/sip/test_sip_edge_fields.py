"""SIP-derived report fields are bounded and validated at the edge (`callcenter.contract.limits`):
over-long or malformed ones get a 4xx and never reach a report; the caller's priority is read only
from trusted sources.

Raw INVITEs come from a loopback UDP socket (the `client` fixture); the priority from an untrusted
source is shown with a real SIPp caller.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from sip_harness import LOOPBACK, EdgeUnderTest, SippLauncher, expect_success
from test_sip_edge_hostile_input import final_response, invite

from callcenter.contract import limits


def _replace(datagram: bytes, old: str, new: str) -> bytes:
    assert old.encode() in datagram
    return datagram.replace(old.encode(), new.encode(), 1)


async def _code(client: socket.socket, edge: EdgeUnderTest, datagram: bytes) -> int:
    client.sendto(datagram, (LOOPBACK, edge.port))
    return int((await final_response(client)).split()[1])


async def test_bad_sip_fields_get_4xx_and_no_report(edge: EdgeUnderTest, client: socket.socket) -> None:
    port = client.getsockname()[1]
    flow_prefix = f"INVITE sip:support@{LOOPBACK}"
    long_flow = "f" * (limits.FLOW_ID_MAX + 1)
    cases = {
        # a priority smuggled into the user part is no flow name (and no priority)
        "flow-params": (_replace(invite(edge.port, port, "v1"), flow_prefix,
                                 f"INVITE sip:support;cc_priority=999@{LOOPBACK}"), 404),
        "flow-long": (_replace(invite(edge.port, port, "v2"), flow_prefix, f"INVITE sip:{long_flow}@{LOOPBACK}"), 404),
        "flow-dots": (_replace(invite(edge.port, port, "v3"), flow_prefix, f"INVITE sip:..@{LOOPBACK}"), 404),
        "flow-empty": (_replace(invite(edge.port, port, "v4"), flow_prefix, f"INVITE sip:{LOOPBACK}"), 404),
        "ruri-long": (_replace(invite(edge.port, port, "v5"), f":{edge.port} SIP/2.0",
                               f":{edge.port};x={'u' * limits.REQUEST_URI_MAX} SIP/2.0"), 414),
        "caller-long": (_replace(invite(edge.port, port, "v6"), "<sip:fuzz@",
                                 f"<sip:{'c' * (limits.CALLER_MAX + 1)}@"), 400),
        "caller-uri-long": (_replace(invite(edge.port, port, "v7"), ">;tag=fv7",
                                     f";p={'p' * limits.SIP_URI_MAX}>;tag=fv7"), 400),
        "display-long": (_replace(invite(edge.port, port, "v8"), '"Fuzz"', f'"{"d" * (limits.DISPLAY_NAME_MAX + 1)}"'),
                         400),
        "call-id-long": (_replace(invite(edge.port, port, "v9"), "Call-ID: v9",
                                  f"Call-ID: v9{'i' * limits.SIP_CALL_ID_MAX}"), 400),
    }
    codes = {name: await _code(client, edge, datagram) for name, (datagram, _) in cases.items()}
    assert codes == {name: code for name, (_, code) in cases.items()}
    assert edge.dispatcher.facts == [] and edge.stack.active_calls() == 0

    # at the limits themselves the call is taken, with every field as sent
    at_limit = invite(edge.port, port, "ok-" + "i" * (limits.SIP_CALL_ID_MAX - 3))
    at_limit = _replace(at_limit, flow_prefix, f"INVITE sip:{'f' * limits.FLOW_ID_MAX}@{LOOPBACK}")
    at_limit = _replace(at_limit, "<sip:fuzz@", f"<sip:{'c' * limits.CALLER_MAX}@")
    at_limit = _replace(at_limit, '"Fuzz"', f'"{"d" * limits.DISPLAY_NAME_MAX}"')
    edge.dispatcher.on("call_arrived", lambda f: edge.stack.reject(f.call_id, 404, "unknown_flow"))
    assert await _code(client, edge, at_limit) == 404
    arrived = await edge.dispatcher.wait_for("call_arrived", timeout_s=5)
    assert arrived.data["flow"] == "f" * limits.FLOW_ID_MAX
    assert arrived.data["caller"] == "c" * limits.CALLER_MAX
    assert arrived.data["caller_display"] == "d" * limits.DISPLAY_NAME_MAX
    assert len(arrived.data["sip_call_id"]) == limits.SIP_CALL_ID_MAX


async def test_priority_from_an_untrusted_source_is_ignored(make_edge: Callable[..., EdgeUnderTest],
                                                           sipp: SippLauncher) -> None:
    edge = make_edge(priority_networks="10.0.0.0/8")
    edge.dispatcher.on("call_arrived", lambda f: edge.stack.reject(f.call_id, 404, "unknown_flow"))
    caller = sipp.start("caller_priority_rejected_404", name="caller", remote_port=edge.port, service="vip")
    await expect_success(caller)
    arrived = await edge.dispatcher.wait_for("call_arrived")
    assert arrived.data["priority"] is None


async def test_priority_in_the_request_uri_from_a_trusted_source(make_edge: Callable[..., EdgeUnderTest],
                                                                client: socket.socket) -> None:
    edge = make_edge(priority_networks="127.0.0.1/32")
    edge.dispatcher.on("call_arrived", lambda f: edge.stack.reject(f.call_id, 404, "unknown_flow"), once=False)
    port = client.getsockname()[1]
    datagram = _replace(invite(edge.port, port, "p1"), f":{edge.port} SIP/2.0", f":{edge.port};cc_priority=42 SIP/2.0")
    assert await _code(client, edge, datagram) == 404
    assert (await edge.dispatcher.wait_for("call_arrived")).data["priority"] == 42
