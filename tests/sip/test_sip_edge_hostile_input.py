"""The SIP edge under hostile input: untrusted sources, INVITE floods from one source, and a fuzzer.

The fuzzer mutates valid SIP messages (byte flips, truncation, duplicated and removed header lines,
huge headers, bad Content-Length, non-UTF-8 bytes, swapped start lines) with a fixed seed and sends a
bounded number of datagrams to a running stack whose scripted dispatcher rejects every call that
arrives; among them hostile but well-formed requests (merged requests, repeated Call-ID and other
single headers, header injection, over-long URIs and fields). Beside it run callers that fail the
connect (issue 10, acceptance 8): some never ACK our 200, some ACK it and never answer the re-INVITE
that moves them to an agent; and real SIPp calls. Afterwards no call is left (`active_calls() ==
0`), the failing callers were hung up with their reasons and every agent leg they held got its BYE,
real calls reached their agent about as fast as before the attack, and a real call still succeeds.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from sip_harness import LOOPBACK, EdgeUnderTest, ScriptedDispatcher, SippLauncher, expect_success, queue_then_agent

from callcenter.contract import limits
from callcenter_sip_edge.legs import CALLER_ACK_TIMEOUT_S, CALLER_REINVITE_TIMEOUT_S
from callcenter_sip_edge.sip_stack import SipStack

FUZZ_SEED = 20240611
FUZZ_DATAGRAMS = 2000
REAL_CALLS = 3
NO_ACK_CALLERS = 6
NO_ANSWER_CALLERS = 2
# a real call may reach its agent this much later under the attack than before it (one SIP thread
# serves both; generous for a loaded 2-core machine: the agent answers after 0.2 s)
SLOWER_THAN_BASELINE_MS = 2_000

SDP = "v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def invite(edge_port: int, client_port: int, call_id: str, method: str = "INVITE", body: str = SDP) -> bytes:
    lines = [
        f"{method} sip:support@{LOOPBACK}:{edge_port} SIP/2.0",
        f"Via: SIP/2.0/UDP {LOOPBACK}:{client_port};branch=z9hG4bK-{os.urandom(4).hex()};rport",
        f"From: \"Fuzz\" <sip:fuzz@{LOOPBACK}:{client_port}>;tag=f{call_id}",
        f"To: <sip:support@{LOOPBACK}:{edge_port}>",
        f"Call-ID: {call_id}",
        f"CSeq: 1 {method}",
        f"Contact: <sip:fuzz@{LOOPBACK}:{client_port}>",
        "Max-Forwards: 70",
        "User-Agent: fuzzer",
    ]
    if body:
        lines += ["Content-Type: application/sdp", f"Content-Length: {len(body)}", "", body]
    else:
        lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


async def final_response(client: socket.socket) -> str:
    while True:
        reply = (await asyncio.to_thread(client.recv, 65535)).decode()
        if not reply.startswith("SIP/2.0 1"):
            return reply


async def test_invite_from_an_untrusted_network_gets_403(make_edge: Callable[..., EdgeUnderTest],
                                                        client: socket.socket) -> None:
    guarded_edge = make_edge(trusted_networks="10.0.0.0/8,192.0.2.0/24")
    port = client.getsockname()[1]
    client.sendto(invite(guarded_edge.port, port, "untrusted-1"), (LOOPBACK, guarded_edge.port))
    assert (await final_response(client)).startswith("SIP/2.0 403")
    # other requests are still answered (OPTIONS keep-alives from anywhere)
    client.sendto(invite(guarded_edge.port, port, "opt-1", method="OPTIONS", body=""), (LOOPBACK, guarded_edge.port))
    assert (await final_response(client)).startswith("SIP/2.0 200")
    assert guarded_edge.dispatcher.facts == [] and guarded_edge.stack.active_calls() == 0


async def test_invite_flood_from_one_source_gets_503_with_retry_after(make_edge: Callable[..., EdgeUnderTest],
                                                                      client: socket.socket) -> None:
    edge, port = make_edge(trusted_networks="127.0.0.0/8", invite_rate=1.0, invite_burst=3), client.getsockname()[1]
    edge.dispatcher.on("call_arrived", lambda f: edge.stack.reject(f.call_id, 486, "busy"), once=False)
    codes = []
    for n in range(5):
        client.sendto(invite(edge.port, port, f"flood-{n}"), (LOOPBACK, edge.port))
        reply = await final_response(client)
        codes.append(int(reply.split()[1]))
        if codes[-1] == 503:
            assert "retry-after: 1" in reply.lower(), reply
    assert codes == [486, 486, 486, 503, 503]
    assert edge.dispatcher.kinds().count("call_arrived") == 3
    assert edge.stack.guard.refused["rate_limited"] == 2
    await asyncio.sleep(1.1)  # a token is back
    client.sendto(invite(edge.port, port, "flood-late"), (LOOPBACK, edge.port))
    assert (await final_response(client)).startswith("SIP/2.0 486")
    for _ in range(50):  # the SIP thread forgets the call just after the 486 leaves
        if edge.stack.active_calls() == 0:
            break
        await asyncio.sleep(0.02)
    assert edge.stack.active_calls() == 0


async def test_repeated_single_headers_and_bare_cr_get_400_before_sippy(edge: EdgeUnderTest,
                                                                        client: socket.socket) -> None:
    port = client.getsockname()[1]
    base = invite(edge.port, port, "dup-1")
    cases = {
        "Repeated Call-ID": base.replace(b"Call-ID: dup-1\r\n", b"Call-ID: dup-1\r\nCall-ID: other\r\n"),
        "Repeated CSeq": base.replace(b"CSeq: 1 INVITE\r\n", b"CSeq: 1 INVITE\r\nCSeq: 2 INVITE\r\n"),
        "Repeated From": base.replace(b"Call-ID:", b"f: <sip:x@127.0.0.1>;tag=2\r\nCall-ID:"),
        "Repeated To": base.replace(b"Call-ID:", b"To: <sip:y@127.0.0.1>\r\nCall-ID:"),
        "Bare CR": base.replace(b'"Fuzz"', b'"Fu\rX-Injected: 1\rzz"'),
    }
    for problem, datagram in cases.items():
        client.sendto(datagram, (LOOPBACK, edge.port))
        reply = await final_response(client)
        assert reply.startswith(f"SIP/2.0 400 Bad Request - {problem}\r\n"), (problem, reply)
        assert reply.count("\nCall-ID:") == 1
    # a repeated header in a response or an ACK is dropped without a word
    client.sendto(base.replace(b"INVITE sip", b"ACK sip").replace(b"Call-ID:", b"Call-ID: a\r\nCall-ID:"),
                  (LOOPBACK, edge.port))
    assert edge.dispatcher.facts == [] and edge.stack.active_calls() == 0


async def test_a_second_branch_of_the_same_invite_is_a_merged_request(edge: EdgeUnderTest,
                                                                      client: socket.socket) -> None:
    """RFC 3261 8.2.2.2: same From tag, Call-ID and CSeq, another branch (it forked upstream and
    both forks reached us): 482 Loop Detected, one call only."""
    port = client.getsockname()[1]
    first = invite(edge.port, port, "merged-1")
    second = first.replace(b";branch=z9hG4bK-", b";branch=z9hG4bK-2nd", 1)
    client.sendto(first, (LOOPBACK, edge.port))
    arrived = await edge.dispatcher.wait_for("call_arrived", timeout_s=5)
    client.sendto(second, (LOOPBACK, edge.port))
    reply = await final_response(client)
    assert reply.startswith("SIP/2.0 482 Loop Detected"), reply
    assert "z9hG4bK-2nd" in reply
    assert edge.dispatcher.kinds() == ["call_arrived"] and edge.stack.active_calls() == 1
    edge.stack.reject(arrived.call_id, 486, "busy")
    assert (await final_response(client)).startswith("SIP/2.0 486")
    await edge.dispatcher.wait_for("call_ended", timeout_s=5)
    # the call is over: the same INVITE again is a new call, not a merged request
    edge.dispatcher.on("call_arrived", lambda f: edge.stack.reject(f.call_id, 486, "busy"))
    client.sendto(first.replace(b";branch=z9hG4bK-", b";branch=z9hG4bK-3rd", 1), (LOOPBACK, edge.port))
    assert (await final_response(client)).startswith("SIP/2.0 486")


def _loopback_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, 0))
    except OSError:
        sock.close()
        pytest.skip(f"cannot bind {host} (only Linux routes all of 127.0.0.0/8 to loopback)")
    sock.settimeout(2.0)
    return sock


def _in_dialog(method: str, edge_port: int, from_host: str, from_port: int, call_id: str, to_tag: str) -> bytes:
    return "\r\n".join([
        f"{method} sip:support@{LOOPBACK}:{edge_port} SIP/2.0",
        f"Via: SIP/2.0/UDP {from_host}:{from_port};branch=z9hG4bK-{os.urandom(4).hex()};rport",
        f"From: \"Fuzz\" <sip:fuzz@{from_host}:{from_port}>;tag=f{call_id}",
        f"To: <sip:support@{LOOPBACK}:{edge_port}>;tag={to_tag}",
        f"Call-ID: {call_id}", f"CSeq: 2 {method}", "Max-Forwards: 70", "Content-Length: 0", "", ""]).encode()


async def test_in_dialog_requests_from_outside_the_dialog_and_the_trusted_networks_get_403(
        make_edge: Callable[..., EdgeUnderTest], sipp: SippLauncher) -> None:
    """Trusted: 127.0.0.2 only (the caller). The welcome media server on 127.0.0.1 is not trusted but
    is a peer of its dialog: its BYE is taken. A BYE with the caller's tags from 127.0.0.3 (neither
    trusted nor a peer) gets 403 and the call goes on; the caller's own BYE ends it."""
    caller, attacker = _loopback_socket("127.0.0.2"), _loopback_socket("127.0.0.3")
    try:
        edge = make_edge(trusted_networks="127.0.0.2/32")
        welcome = sipp.start("media_welcome_uas", name="welcome")
        edge.dispatcher.on("call_arrived", lambda f: edge.stack.media(f.call_id, welcome.uri("welcome"), "welcome"))
        caller_port = caller.getsockname()[1]
        datagram = invite(edge.port, caller_port, "dlg-1").replace(
            f"{LOOPBACK}:{caller_port}".encode(), f"127.0.0.2:{caller_port}".encode())
        caller.sendto(datagram, (LOOPBACK, edge.port))
        answer = await final_response(caller)
        assert answer.startswith("SIP/2.0 200"), answer
        to_tag = re.search(r"^To:.*;tag=([^;\r\n]+)", answer, re.MULTILINE | re.IGNORECASE).group(1)  # type: ignore[union-attr]
        caller.sendto(_in_dialog("ACK", edge.port, "127.0.0.2", caller_port, "dlg-1", to_tag).replace(
            b"CSeq: 2 ACK", b"CSeq: 1 ACK"), (LOOPBACK, edge.port))
        await expect_success(welcome)   # its BYE from an untrusted peer of its dialog was answered 200
        await edge.dispatcher.wait_for("media_ended", timeout_s=5)

        attacker_port = attacker.getsockname()[1]
        attacker.sendto(_in_dialog("BYE", edge.port, "127.0.0.3", attacker_port, "dlg-1", to_tag),
                        (LOOPBACK, edge.port))
        assert (await final_response(attacker)).startswith("SIP/2.0 403")
        await asyncio.sleep(0.2)
        assert "call_ended" not in edge.dispatcher.kinds() and edge.stack.active_calls() == 1

        caller.sendto(_in_dialog("BYE", edge.port, "127.0.0.2", caller_port, "dlg-1", to_tag), (LOOPBACK, edge.port))
        assert (await final_response(caller)).startswith("SIP/2.0 200")
        ended = await edge.dispatcher.wait_for("call_ended", timeout_s=5)
        assert ended.data["by"] == "caller"
    finally:
        caller.close()
        attacker.close()


# ------------------------------------------------------------------------------------- fuzzer
def _mutate(rng: random.Random, msg: bytes) -> bytes:
    kind = rng.randrange(9)
    if kind == 0:  # random byte flips
        data = bytearray(msg)
        for _ in range(rng.randint(1, 12)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 1:  # truncation
        return msg[: rng.randrange(1, len(msg))]
    head, _, body = msg.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if len(lines) < 2:  # an earlier mutation left no header lines
        return msg + b"\r\nX: y"
    if kind == 2:  # a header line duplicated (Via, To, CSeq, Call-ID, Content-Length ...)
        i = rng.randrange(1, len(lines))
        lines.insert(rng.randrange(1, len(lines) + 1), lines[i])
    elif kind == 3:  # a header line removed
        del lines[rng.randrange(1, len(lines))]
    elif kind == 4:  # a huge header (sometimes over the size limit, sometimes just under)
        lines.append(b"X-Huge: " + b"h" * rng.choice((500, 4000, 7600, 9000, 60000)))
    elif kind == 5:  # a lying Content-Length
        lines = [ln for ln in lines if not ln.lower().startswith(b"content-length")]
        lines.append(b"Content-Length: " + str(rng.choice((-1, 0, 5, 99999, 2**40))).encode())
    elif kind == 6:  # non-UTF-8 or control bytes inside a header value
        i = rng.randrange(1, len(lines))
        lines[i] = lines[i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif kind == 7:  # a garbled start line
        lines[0] = rng.choice((b"INVITE", b"INVITE sip: SIP/2.0", b"SIP/2.0 200", b"INVITE sip:a@b SIP/3.0",
                               b"SIP/2.0 999999 Weird", b"invite sip:support@127.0.0.1 SIP/2.0",
                               b" INVITE  sip:x@127.0.0.1  SIP/2.0", b"\x00\x01\x02"))
    else:  # header values replaced by junk
        i = rng.randrange(1, len(lines))
        name = lines[i].split(b":", 1)[0]
        lines[i] = name + b": " + rng.choice((b"", b"<", b">;;;", b"sip:", b"%%%", b"1 2 3", b"\t \t",
                                              b"<sip:x@[::1>", b"SIP/2.0/UDP", b";branch"))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _response_for_unknown_transaction(edge_port: int, client_port: int, n: int) -> bytes:
    return (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {LOOPBACK}:{edge_port};branch=z9hG4bK-nope{n}\r\n"
            f"From: <sip:a@{LOOPBACK}>;tag=1\r\nTo: <sip:b@{LOOPBACK}>;tag=2\r\nCall-ID: resp-{n}\r\n"
            f"CSeq: 1 INVITE\r\nContact: <sip:b@{LOOPBACK}:{client_port}>\r\nContent-Length: 0\r\n\r\n").encode()


def _hostile(rng: random.Random, edge_port: int, client_port: int, n: int, earlier: list[bytes]) -> bytes:
    """One of the hostile but well-formed cases: a merged request (an earlier INVITE on another
    branch), repeated single headers, header injection (bare CR, JSON in a header), over-long
    Request-URIs and fields, a priority smuggled into the flow name."""
    base = invite(edge_port, client_port, f"fh-{n}")
    kind = rng.randrange(7)
    if kind == 0 and earlier:
        return rng.choice(earlier).replace(b";branch=z9hG4bK-", f";branch=z9hG4bK-m{n}-".encode(), 1)
    if kind <= 1:
        name = rng.choice((b"Call-ID: x", b"CSeq: 9 INVITE", b"From: <sip:a@b>;tag=9", b"To: <sip:b@c>"))
        return base.replace(b"Max-Forwards:", name + b"\r\nMax-Forwards:", 1)
    if kind == 2:
        injected = rng.choice((b'X-Note: {"event": "agent.paused", "level": "critical", "agent_id": "a1"}',
                               b'X-Note: a\rX-Injected: 1', 'X-Note: \u2028{"event": "forged"}'.encode()))
        return base.replace(b"Max-Forwards:", injected + b"\r\nMax-Forwards:", 1)
    if kind == 3:
        return base.replace(b"INVITE sip:support@", b"INVITE sip:" + b"s" * rng.choice((65, 700, 3600)) + b"@", 1)
    if kind == 4:
        return base.replace(b"<sip:fuzz@", b"<sip:" + b"c" * rng.choice((129, 300, 4000)) + b"@", 1)
    if kind == 5:
        return base.replace(b'"Fuzz"', b'"' + b"d" * rng.choice((129, 2000)) + b'"', 1)
    return base.replace(b"INVITE sip:support@", b"INVITE sip:support;cc_priority=999999@", 1)


def fuzz_datagrams(edge_port: int, client_port: int, count: int, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    earlier: list[bytes] = []
    for n in range(count):
        base_kind = rng.randrange(7)
        if base_kind <= 2:
            base = invite(edge_port, client_port, f"fz-{n}")
            earlier = [*earlier[-19:], base]
        elif base_kind == 3:
            base = invite(edge_port, client_port, f"fz-{n}", method=rng.choice(("BYE", "CANCEL", "ACK", "OPTIONS",
                                                                              "UPDATE", "REGISTER")), body="")
        elif base_kind == 4:
            base = invite(edge_port, client_port, f"fz-{n}").replace(b"To: <sip:support@", b"To: <sip:x@", 1) \
                .replace(b">\r\nCall-ID", b">;tag=zz\r\nCall-ID", 1)  # in-dialog for no dialog
        elif base_kind == 5:
            base = _response_for_unknown_transaction(edge_port, client_port, n)
        else:
            yield _hostile(rng, edge_port, client_port, n, earlier)
            continue
        mutations = rng.choice((0, 0, 1, 1, 2, 3))
        for _ in range(mutations):
            base = _mutate(rng, base)
        yield base


async def _in_step(client: socket.socket, edge_port: int, n: int) -> None:
    """Send an OPTIONS and read what the edge sent us until its 200: then the edge has read every
    datagram sent before it (they arrive in order on loopback and are read in order), so nothing
    is still waiting in its socket when the test looks at its calls."""
    port = client.getsockname()[1]
    marker = f"Call-ID: step-{n}\r\n".encode()
    client.sendto(invite(edge_port, port, f"step-{n}", method="OPTIONS", body=""), (LOOPBACK, edge_port))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if marker in client.recv(65535):
                return
        except (BlockingIOError, InterruptedError):
            await asyncio.sleep(0.002)
        except OSError:
            pass  # an ICMP error for an earlier datagram: read on
    raise AssertionError(f"the edge did not answer OPTIONS step-{n} within 10 s")


def _header(message: str, name: str) -> str:
    found = re.search(rf"^{name}:[ \t]*([^\r\n]*)", message, re.MULTILINE | re.IGNORECASE)
    return found.group(1) if found else ""


def _reply_200(request: str) -> bytes:
    copied = (f"{name}: {_header(request, name)}" for name in ("Via", "From", "To", "Call-ID", "CSeq"))
    lines = ["SIP/2.0 200 OK", *copied, "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


async def _caller_failing_the_connect(edge_port: int, user: str, acks: bool) -> None:
    """A caller on its own socket that does not do its part of the connect: it never ACKs our 200
    (`acks` False), or ACKs it and then ignores the re-INVITE that moves it to an agent. It answers
    the edge's BYE with 200 and returns; AssertionError without a BYE within the edge's bounds."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((LOOPBACK, 0))
        sock.settimeout(0.5)
        port = sock.getsockname()[1]
        request = invite(edge_port, port, f"{user}-{os.urandom(4).hex()}")
        sock.sendto(request.replace(b"sip:fuzz@", f"sip:{user}@".encode()), (LOOPBACK, edge_port))
        deadline = time.monotonic() + CALLER_ACK_TIMEOUT_S + CALLER_REINVITE_TIMEOUT_S + 20
        while time.monotonic() < deadline:
            try:
                message = (await asyncio.to_thread(sock.recv, 65535)).decode(errors="replace")
            except TimeoutError:
                continue
            if message.startswith("BYE "):
                sock.sendto(_reply_200(message), (LOOPBACK, edge_port))
                return
            if acks and message.startswith("SIP/2.0 200") and _header(message, "CSeq").endswith("INVITE"):
                contact = re.sub(r"^.*<([^>]*)>.*$", r"\1", _header(message, "Contact"))
                sock.sendto("\r\n".join([
                    f"ACK {contact} SIP/2.0",
                    f"Via: SIP/2.0/UDP {LOOPBACK}:{port};branch=z9hG4bK-{os.urandom(4).hex()};rport",
                    f"From: {_header(message, 'From')}", f"To: {_header(message, 'To')}",
                    f"Call-ID: {_header(message, 'Call-ID')}", "CSeq: 1 ACK", "Max-Forwards: 70",
                    "Content-Length: 0", "", ""]).encode(), (LOOPBACK, edge_port))
            # anything else (our 200 again, the re-INVITE to the agent) goes unanswered
        raise AssertionError(f"{user}: no BYE from the edge")
    finally:
        sock.close()


def _times_to_agent(dispatcher: ScriptedDispatcher, caller: str) -> list[int]:
    """ms from arrival to agent_answered of the answered calls of `caller`, in arrival order."""
    arrived = {f.call_id: f.ts_ms for f in dispatcher.facts
               if f.kind == "call_arrived" and f.data["caller"] == caller}
    return [f.ts_ms - arrived[f.call_id] for f in dispatcher.facts
            if f.kind == "agent_answered" and f.call_id in arrived]


async def _real_calls(stack: SipStack, dispatcher: ScriptedDispatcher, sipp: SippLauncher, edge_port: int,
                      count: int) -> None:
    """`count` real SIPp calls one after another (caller -> edge -> agent, answered, BYE)."""
    for n in range(count):
        agent = sipp.start("agent_early_uas", name=f"agent-{n}")
        # matched before the fuzz's reject-everything reaction, for SIPp's caller only
        uri = agent.uri("agent")
        dispatcher.on("call_arrived", lambda f, uri=uri: stack.ring(f.call_id, "o1", "a1", uri, 10.0),  # type: ignore[misc]
                      flow="support", caller="caller1")
        dispatcher._reactions.insert(0, dispatcher._reactions.pop())
        caller = sipp.start("caller_answered_bye", name=f"caller-{n}", remote_port=edge_port, service="support",
                            pause_ms=300)
        await expect_success(caller, agent)


async def test_fuzzed_datagrams_never_crash_the_edge_or_leak_calls(edge: EdgeUnderTest, client: socket.socket,
                                                                   sipp: SippLauncher) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    # callers failing the connect get the queue media; once one is on it, an agent is rung for it
    music = sipp.start("media_hold_uas", name="noack-music", calls=NO_ACK_CALLERS)
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"), once=False,
                  caller="noack")
    queue, agents = queue_then_agent(edge, sipp, "agent_late_uas", calls=NO_ANSWER_CALLERS, caller="noanswer")
    # every other call the fuzz lets through is rejected, as a dispatcher would for an unknown flow
    dispatcher.on("call_arrived", lambda f: stack.reject(f.call_id, 404, "Not Found"), once=False)
    client.setblocking(False)
    port = client.getsockname()[1]
    target = (LOOPBACK, edge.port)
    await _real_calls(stack, dispatcher, sipp, edge.port, 1)   # before the attack
    [baseline_ms] = _times_to_agent(dispatcher, "caller1")
    failing = asyncio.gather(*(_caller_failing_the_connect(edge.port, "noack", acks=False)
                               for _ in range(NO_ACK_CALLERS)),
                             *(_caller_failing_the_connect(edge.port, "noanswer", acks=True)
                               for _ in range(NO_ANSWER_CALLERS)))
    # real calls through the edge while the fuzz and the failing callers run
    real_calls = asyncio.create_task(_real_calls(stack, dispatcher, sipp, edge.port, REAL_CALLS))
    sent = 0
    started = time.monotonic()
    for datagram in fuzz_datagrams(edge.port, port, FUZZ_DATAGRAMS, FUZZ_SEED):
        try:
            client.sendto(datagram[:65000], target)
        except OSError:
            pass  # EMSGSIZE and friends: the mutation made it unsendable
        sent += 1
        if sent % 50 == 0:
            # bounded pace: the edge has read all of this step before the next is sent (a fixed
            # sleep let a loaded edge fall behind: the calls it had not read yet were counted as leaks)
            await _in_step(client, edge.port, sent)
    await _in_step(client, edge.port, sent + 1)
    assert time.monotonic() - started < 60
    await asyncio.wait_for(real_calls, timeout=60)
    await asyncio.wait_for(failing, timeout=CALLER_ACK_TIMEOUT_S + CALLER_REINVITE_TIMEOUT_S + 30)
    # real calls reached their agent about as fast as before the attack
    baseline, *attacked = _times_to_agent(dispatcher, "caller1")
    assert baseline == baseline_ms and len(attacked) == REAL_CALLS
    assert max(attacked) <= baseline_ms + SLOWER_THAN_BASELINE_MS, (baseline_ms, attacked)
    # the failing callers were hung up saying why; no agent was reported answered for them, and
    # every leg they held (queue media, the agents rung) got its BYE
    def ends_of(user: str) -> list[str]:
        calls = {f.call_id for f in dispatcher.facts if f.kind == "call_arrived" and f.data["caller"] == user}
        return [f.data["reason"] for f in dispatcher.facts if f.kind == "call_ended" and f.call_id in calls]

    for user, reason, count in (("noack", "caller_no_ack", NO_ACK_CALLERS),
                                ("noanswer", "caller_reinvite_timeout", NO_ANSWER_CALLERS)):
        deadline = time.monotonic() + 5   # the last call_ended crosses from the SIP thread after its BYE
        while len(ends_of(user)) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert ends_of(user) == [reason] * count, (user, ends_of(user))
    await expect_success(music, queue)
    await agents.finish()   # their ACK would carry the caller's answer: there is none, only a BYE
    assert sum(m.is_request("BYE") for m in agents.messages() if not m.sent) == NO_ANSWER_CALLERS

    # the stack still answers, and every call the fuzz created has ended
    deadline = time.monotonic() + 10
    while stack.active_calls() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.2)  # the last facts cross from the SIP thread
    arrived = {f.call_id for f in dispatcher.facts if f.kind == "call_arrived"}
    ended = [f.call_id for f in dispatcher.facts if f.kind == "call_ended"]
    assert stack.active_calls() == 0, f"{stack.active_calls()} calls leaked of {len(arrived)} that arrived"
    # each call that arrived ended once; no call ends that was never reported (the dispatcher
    # could not place its report)
    assert sorted(ended) == sorted(arrived), [f for f in dispatcher.facts if f.call_id not in arrived]
    assert len(arrived) > 50  # the fuzz did let calls through
    assert dispatcher.kinds().count("agent_answered") == REAL_CALLS + 1
    assert dispatcher.kinds().count("media_answered") == NO_ANSWER_CALLERS   # never for a caller without ACK
    # nothing the fuzz sent made a call with a field over its limit or a priority
    for fact in dispatcher.facts:
        if fact.kind == "call_arrived":
            assert len(fact.data["flow"]) <= limits.FLOW_ID_MAX and len(fact.data["caller"]) <= limits.CALLER_MAX
            assert fact.data["priority"] is None or fact.data["caller"] == "caller1"

    agent = sipp.start("agent_early_uas", name="agent")
    dispatcher.on("call_arrived", lambda f: stack.ring(f.call_id, "o1", "a1", agent.uri("agent"), 10.0),
                  flow="support", caller="caller1")
    # the handler above is matched first only for SIPp's caller; keep rejecting the rest
    dispatcher._reactions.insert(0, dispatcher._reactions.pop())
    caller = sipp.start("caller_answered_bye", name="caller", remote_port=edge.port, service="support",
                        pause_ms=300)
    await expect_success(caller, agent)
    await dispatcher.wait_for("agent_answered", timeout_s=10)
    deadline = time.monotonic() + 5
    while stack.active_calls() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert stack.active_calls() == 0
