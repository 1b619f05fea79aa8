"""The edge's registrar against SIPp and a hand-written UDP phone, bindings in a real redis-server:
challenge, MD5 and SHA-256 credentials, wrong password and unknown agent (one answer), expiry and
423, several contacts, removal one by one and with `Contact: *`, stale and replayed nonces, floods
and repeated failures limited (503 + Retry-After), and the ring of an AOR: all its contacts at once,
the first 200 wins; none: refused (`not_registered`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from registrar_harness import (
    DOMAIN,
    TENANT,
    LogRecorder,
    RegisterClient,
    provision,
    registrations,
    start_register,
)
from sip_harness import (
    EdgeUnderTest,
    ScriptedDispatcher,
    SippLauncher,
    expect_success,
    free_udp_port,
    started_stack,
)

from callcenter.contract.commands import Ring
from callcenter.store import Store
from callcenter_dev.register_client import digest_field
from callcenter_sip_edge.digest import Nonces
from callcenter_sip_edge.log_limits import RateLimitedLog
from callcenter_sip_edge.registrar import RegistrarOptions, RegistrarSetup
from callcenter_sip_edge.registrations import Registrations
from callcenter_sip_edge.sip_stack import SipStack

PASSWORD = "correct horse"
# SIPp 3.6 knows MD5 only and reads the first challenge: MD5 first for it (the default is SHA-256 first)
OPTIONS = RegistrarOptions(domains=frozenset({DOMAIN}), min_expires_s=1, max_expires_s=3600, max_contacts=3,
                           algorithms=("MD5", "SHA-256"), rate=50.0, burst=200, failures_per_minute=10)


class RegistrarEdge:
    def __init__(self, edge: EdgeUnderTest, regs: Registrations) -> None:
        self.edge, self.regs, self.port = edge, regs, edge.port
        self.store = Store(regs.redis, TENANT)


@pytest_asyncio.fixture
async def make_registrar(redis: aioredis.Redis) -> AsyncIterator[Callable[..., RegistrarEdge]]:
    stacks: list[SipStack] = []

    def start(log: RateLimitedLog | None = None, **changes: Any) -> RegistrarEdge:
        options = replace(OPTIONS, **changes)
        regs = registrations(redis, options, limited_log=log)
        dispatcher = ScriptedDispatcher()
        stack, port = started_stack(dispatcher, registrar=RegistrarSetup(options, regs.nonces, regs.submit))
        stacks.append(stack)
        return RegistrarEdge(EdgeUnderTest(stack=stack, dispatcher=dispatcher, port=port), regs)

    yield start
    for stack in stacks:
        stack.stop()


@pytest_asyncio.fixture
async def registrar(make_registrar: Callable[..., RegistrarEdge]) -> RegistrarEdge:
    edge = make_registrar()
    await provision(edge.store, "a1", PASSWORD)
    return edge


async def finished(process: Any) -> str:
    code = await process.finish()
    out = process.proc.stdout.read().decode(errors="replace") if process.proc.stdout else ""
    assert code == 0, f"SIPp {process.name} exited {code}:\n{out[-2000:]}\n{process.traces('errors')[-2000:]}"
    return process.traces()


async def test_sipp_registers_after_a_challenge_and_gets_its_binding_listed(registrar: RegistrarEdge,
                                                                            tmp_path: Path) -> None:
    sipp = start_register(tmp_path, "register_auth", registrar.port, "a1", PASSWORD, expires=120)
    trace = await finished(sipp)
    assert 'www-authenticate: digest realm="callcenter"' in trace.lower() and 'qop="auth"' in trace
    assert "algorithm=MD5" in trace and "algorithm=SHA-256" in trace
    assert f"Contact: <sip:a1@127.0.0.1:{sipp.port}>;expires=" in trace
    found = await registrar.regs.bindings("a1")
    assert found is not None and [(b.uri, b.received, b.transport) for b in found] == [
        (f"sip:a1@127.0.0.1:{sipp.port}", f"127.0.0.1:{sipp.port}", "udp")]
    assert 115_000 < found[0].expiry_ms - _now_ms() <= 120_000


def _now_ms() -> int:
    return int(time.time() * 1000)


async def test_wrong_password_and_unknown_agent_get_the_same_403(registrar: RegistrarEdge, tmp_path: Path) -> None:
    wrong = start_register(tmp_path, "register_forbidden", registrar.port, "a1", "not the password")
    unknown = start_register(tmp_path, "register_forbidden", registrar.port, "nobody", PASSWORD)
    wrong_trace, unknown_trace = await finished(wrong), await finished(unknown)
    assert "SIP/2.0 403 Forbidden" in wrong_trace and "SIP/2.0 403 Forbidden" in unknown_trace
    assert await registrar.regs.bindings("a1") == []
    # the same answer by hand, headers and all (no hint which it was)
    phone, stranger = RegisterClient(registrar.port, "a1", "nope"), RegisterClient(registrar.port, "ghost", "nope")
    try:
        a, b = await phone.register(), await stranger.register()
    finally:
        phone.close()
        stranger.close()
    assert (a.code, a.phrase) == (b.code, b.phrase) == (403, "Forbidden")
    assert sorted(k for k, _ in a.headers) == sorted(k for k, _ in b.headers)


async def test_expires_under_the_minimum_gets_423_with_min_expires(make_registrar: Callable[..., RegistrarEdge],
                                                                   tmp_path: Path) -> None:
    edge = make_registrar(min_expires_s=60)
    await provision(edge.store, "a1", PASSWORD)
    trace = await finished(start_register(tmp_path, "register_too_brief", edge.port, "a1", PASSWORD, expires=30))
    assert "SIP/2.0 423 Interval Too Brief" in trace and "min-expires: 60" in trace.lower()


async def test_a_binding_expires_and_its_aor_is_forgotten(registrar: RegistrarEdge, tmp_path: Path) -> None:
    await finished(start_register(tmp_path, "register_auth", registrar.port, "a1", PASSWORD, expires=1))
    assert len(await registrar.regs.bindings("a1") or []) == 1
    await asyncio.sleep(1.5)
    assert await registrar.regs.bindings("a1") == []
    # and the keys are gone by their TTL, lapse step or not
    assert not await registrar.regs.redis.exists(registrar.store.keys.aor("a1"))


async def test_several_contacts_then_one_removed_then_all_with_star(registrar: RegistrarEdge, tmp_path: Path) -> None:
    second = free_udp_port()
    trace = await finished(start_register(tmp_path, "register_two_contacts", registrar.port, "a1", PASSWORD,
                                          keys={"contact2_port": str(second)}))
    assert trace.count("Contact: <sip:a1@127.0.0.1:") >= 3  # two in the 200
    found = await registrar.regs.bindings("a1") or []
    assert [(b.q, b.instance) for b in found] == [(0.9, None), (0.5, "<urn:uuid:00000000-0000-0000-0000-000000000001>")]
    # same IP as the REGISTER came from: the Contact is rung as it is (it listens there)
    assert found[1].target() == f"sip:a1@127.0.0.1:{second}"
    # Expires: 0 for the first (another phone: its own Call-ID)
    first_port = int(found[0].received.rsplit(":", 1)[1])
    phone = RegisterClient(registrar.port, "a1", PASSWORD)
    try:
        first = await phone.send(phone.request(expires=0, contact=f"<sip:a1@127.0.0.1:{first_port}>"))
        challenge = first.first("WWW-Authenticate") or ""
        done = await phone.send(phone.request(expires=0, contact=f"<sip:a1@127.0.0.1:{first_port}>",
                                              authorization=phone.authorization(challenge)))
    finally:
        phone.close()
    assert done.code == 200 and len(done.all("Contact")) == 1
    assert [b.instance for b in await registrar.regs.bindings("a1") or []] == [found[1].instance]
    trace = await finished(start_register(tmp_path, "register_star", registrar.port, "a1", PASSWORD))
    assert "SIP/2.0 200 OK" in trace
    assert await registrar.regs.bindings("a1") == []


async def test_sha256_stale_nonce_and_replayed_nc(make_registrar: Callable[..., RegistrarEdge]) -> None:
    edge = make_registrar(nonce_secret=b"s" * 32, nonce_ttl_s=30)
    await provision(edge.store, "a1", PASSWORD)
    phone = RegisterClient(edge.port, "a1", PASSWORD)
    try:
        ok = await phone.register(algorithm="SHA-256")
        assert ok.code == 200, ok
        # a nonce of this secret issued an hour ago: stale=true, and the phone needs no new password
        old = Nonces(b"s" * 32, 30).issue(now=_now_ms() / 1000 - 3600)
        challenge = f'Digest realm="callcenter", nonce="{old}", algorithm=SHA-256, qop="auth"'
        stale = await phone.send(phone.request(authorization=phone.authorization(challenge)))
        assert stale.code == 401 and all("stale=true" in c for c in stale.all("WWW-Authenticate"))
        # the same credentials twice (same nonce, same nc): the second is a replay
        fresh = await phone.send(phone.request())
        challenge = next(c for c in fresh.all("WWW-Authenticate") if "SHA-256" in c)
        credentials = phone.authorization(challenge, nc=1)
        assert (await phone.send(phone.request(authorization=credentials))).code == 200
        replay = await phone.send(phone.request(authorization=credentials))
        assert replay.code == 401 and "stale=true" in (replay.first("WWW-Authenticate") or "")
        # a nonce of another secret (another edge, a restarted one): stale=true for a phone that knows
        # the password, a fresh challenge (no stale) for one that does not
        foreign = challenge.replace(digest_field(challenge, "nonce") or "", Nonces(b"x" * 32, 30).issue())
        moved = await phone.send(phone.request(authorization=phone.authorization(foreign)))
        assert moved.code == 401 and "stale=true" in (moved.first("WWW-Authenticate") or "")
        bad = await phone.send(phone.request(authorization=phone.authorization(foreign, password="wrong")))
        assert bad.code == 401 and "stale=true" not in (bad.first("WWW-Authenticate") or "")
    finally:
        phone.close()


async def test_a_register_flood_from_one_source_gets_503_with_retry_after(
        make_registrar: Callable[..., RegistrarEdge]) -> None:
    edge = make_registrar(rate=2.0, burst=5)
    phone = RegisterClient(edge.port, "a1", PASSWORD)
    try:
        answers = [await phone.send(phone.request()) for _ in range(12)]
    finally:
        phone.close()
    codes = [a.code for a in answers]
    assert codes[:5] == [401] * 5 and 503 in codes[5:]
    assert all(int(a.first("Retry-After") or 0) >= 1 for a in answers if a.code == 503)


async def test_repeated_wrong_passwords_are_limited_per_aor_and_per_source(
        make_registrar: Callable[..., RegistrarEdge]) -> None:
    edge = make_registrar(failures_per_minute=3)
    await provision(edge.store, "a1", PASSWORD)
    await provision(edge.store, "a2", PASSWORD)
    guesser = RegisterClient(edge.port, "a1", "guess")
    try:
        codes = [(await guesser.register(algorithm="MD5")).code for _ in range(3)]
        assert codes == [403, 403, 403]
        # the AOR is closed for a minute: the right password from elsewhere is turned away too
        owner = RegisterClient(edge.port, "a1", PASSWORD)
        try:
            limited = await owner.register()
        finally:
            owner.close()
        assert limited.code == 503 and int(limited.first("Retry-After") or 0) >= 1
        # and so is this source, for another AOR
        guesser.agent_id, guesser.password = "a2", PASSWORD
        assert (await guesser.register()).code == 503
    finally:
        guesser.close()
    assert await edge.regs.bindings("a1") == []


async def test_too_many_contacts_is_refused(make_registrar: Callable[..., RegistrarEdge]) -> None:
    edge = make_registrar(max_contacts=1)
    await provision(edge.store, "a1", PASSWORD)
    first, second = RegisterClient(edge.port, "a1", PASSWORD), RegisterClient(edge.port, "a1", PASSWORD)
    try:
        assert (await first.register()).code == 200
        refused = await second.register()
    finally:
        first.close()
        second.close()
    assert (refused.code, refused.phrase) == (403, "Forbidden - Too Many Contacts")
    assert len(await edge.regs.bindings("a1") or []) == 1


async def test_registrations_per_tenant_are_bounded(make_registrar: Callable[..., RegistrarEdge]) -> None:
    edge = make_registrar(max_registrations=1)
    await provision(edge.store, "a1", PASSWORD)
    await provision(edge.store, "a2", PASSWORD)
    first, second = RegisterClient(edge.port, "a1", PASSWORD), RegisterClient(edge.port, "a2", PASSWORD)
    try:
        assert (await first.register()).code == 200
        refused = await second.register()
        assert (await first.register()).code == 200   # a registered AOR still refreshes at the limit
    finally:
        first.close()
        second.close()
    assert refused.code == 503 and int(refused.first("Retry-After") or 0) >= 1
    assert await edge.regs.bindings("a2") == []


async def test_an_aor_rings_all_its_contacts_and_the_first_answer_wins(registrar: RegistrarEdge,
                                                                        sipp: SippLauncher) -> None:
    edge = registrar.edge
    stack, dispatcher = edge.stack, edge.dispatcher
    music = sipp.start("media_hold_uas", name="queue-music")
    desk = sipp.start("agent_late_uas", name="desk")
    mobile = sipp.start("agent_noanswer_uas", name="mobile")
    for port in (desk.port, mobile.port):
        client = RegisterClient(edge.port, "a1", PASSWORD)
        try:
            ok = await client.send(client.request(contact=f"<sip:a1@127.0.0.1:{port}>"))
            challenge = ok.first("WWW-Authenticate") or ""
            answer = await client.send(client.request(contact=f"<sip:a1@127.0.0.1:{port}>",
                                                      authorization=client.authorization(challenge)))
            assert answer.code == 200, answer
        finally:
            client.close()
    found = await registrar.regs.bindings("a1") or []
    assert len(found) == 2

    def ring(fact: Any) -> None:
        stack.ring_registered(Ring(call_id=fact.call_id, offer_id="o1", agent_id="a1", uri=f"sip:a1@{DOMAIN}",
                                   timeout_s=10.0), [b.uri for b in found])

    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"))
    dispatcher.on("media_answered", ring)
    caller = sipp.start("caller_reinvited_1_bye", name="caller", remote_port=edge.port, service="support",
                        pause_ms=500)
    await expect_success(caller, music, desk, mobile)
    await dispatcher.wait_for("call_ended")
    kinds = dispatcher.kinds()
    # one agent, one outcome: answered, and no agent_failed for the contact that was cancelled
    assert kinds.count("agent_answered") == 1 and "agent_failed" not in kinds
    assert "CANCEL sip:a1@127.0.0.1" in mobile.traces()


async def test_an_aor_without_contacts_is_refused_at_once(registrar: RegistrarEdge, sipp: SippLauncher) -> None:
    edge = registrar.edge
    stack, dispatcher = edge.stack, edge.dispatcher
    music = sipp.start("media_hold_uas", name="queue-music")
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"))
    dispatcher.on("media_answered", lambda f: stack.ring_registered(
        Ring(call_id=f.call_id, offer_id="o1", agent_id="a1", uri=f"sip:a1@{DOMAIN}", timeout_s=10.0), []))
    caller = sipp.start("caller_answered_bye", name="caller", remote_port=edge.port, service="support",
                        pause_ms=1500)
    refused = await dispatcher.wait_for("command_refused")
    assert refused.data["reason"] == "not_registered" and refused.data["offer_id"] == "o1"
    assert refused.data["command"] == "command.ring"
    await expect_success(caller, music)



async def test_a_contact_registered_through_a_proxy_is_rung_through_its_path(registrar: RegistrarEdge,
                                                                             sipp: SippLauncher) -> None:
    edge = registrar.edge
    stack, dispatcher = edge.stack, edge.dispatcher
    music = sipp.start("media_hold_uas", name="queue-music")
    proxy = sipp.start("agent_late_uas", name="proxy")   # the proxy that added Path: it answers too
    phone = RegisterClient(edge.port, "a1", PASSWORD)
    hop = f"<sip:127.0.0.1:{proxy.port};lr>"
    try:
        # a Contact nobody can reach but the proxy (RFC 3327's example: the phone behind its P-CSCF)
        answer = await phone.register(contact="<sip:a1@10.9.9.9:5060>", path=(hop,))
    finally:
        phone.close()
    assert answer.code == 200, answer
    [binding] = await registrar.regs.bindings("a1") or []
    assert binding.path == (hop,)
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"))
    dispatcher.on("media_answered", lambda f: stack.ring_registered(
        Ring(call_id=f.call_id, offer_id="o1", agent_id="a1", uri=f"sip:a1@{DOMAIN}", timeout_s=10.0),
        [binding.target()]))
    caller = sipp.start("caller_reinvited_1_bye", name="caller", remote_port=edge.port, service="support",
                        pause_ms=500)
    await expect_success(caller, music, proxy)
    await dispatcher.wait_for("call_ended")
    invite = proxy.traces().split("INVITE sip:", 1)[1].split("\n\n", 1)[0]
    # to the Contact as registered, by way of the proxy, with the Path as its Route set
    assert invite.startswith("a1@10.9.9.9:5060 SIP/2.0"), invite
    assert f"Route: {hop}" in invite, invite
    assert "agent_answered" in dispatcher.kinds()


async def test_the_edge_keeps_serving_calls_through_a_flood_of_wrong_passwords(
        make_registrar: Callable[..., RegistrarEdge], sipp: SippLauncher) -> None:
    recorder = LogRecorder()
    registrar = make_registrar(log=RateLimitedLog(recorder, burst=5, window_s=60.0), rate=1000.0, burst=1000,
                               failures_per_minute=5)
    await provision(registrar.store, "a1", PASSWORD)
    edge = registrar.edge
    stack, dispatcher = edge.stack, edge.dispatcher
    music = sipp.start("media_hold_uas", name="queue-music")
    agent = sipp.start("agent_late_uas", name="agent")
    dispatcher.on("call_arrived", lambda f: stack.media(f.call_id, music.uri("moh"), "queue"))
    dispatcher.on("media_answered", lambda f: stack.ring(f.call_id, "o1", "a7", agent.uri("agent"), 10.0))
    caller = sipp.start("caller_reinvited_1_bye", name="caller", remote_port=edge.port, service="support",
                        pause_ms=2000)

    async def guess(source: int) -> list[int]:
        guesser = RegisterClient(edge.port, "a1", f"guess-{source}")
        try:
            return [(await guesser.register(algorithm="MD5")).code for _ in range(40)]
        finally:
            guesser.close()

    codes = [code for batch in await asyncio.gather(*(guess(i) for i in range(4))) for code in batch]
    await expect_success(caller, music, agent)   # the call went through the flood
    assert "agent_answered" in dispatcher.kinds()
    # five wrong passwords for the AOR (and the source), then every guess is turned away before Redis is
    # read; the four guessers race, so up to three more were already being checked when the fifth failed
    refused = codes.count(403)
    assert 5 <= refused <= 8 and codes.count(503) == len(codes) - refused
    assert await registrar.regs.bindings("a1") == []
    # logged once per cause and window, however many there were
    assert recorder.count("sip.register_refused", reason="wrong_credentials") == 5
    assert recorder.count("sip.register_refused", reason="too_many_failures") == 5


async def test_registers_waiting_on_redis_are_bounded(make_registrar: Callable[..., RegistrarEdge],
                                                      redis: aioredis.Redis,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import callcenter_sip_edge.registrations as registrations_module

    monkeypatch.setattr(registrations_module, "MAX_IN_FLIGHT", 1)
    edge = make_registrar()
    await provision(edge.store, "a1", PASSWORD)
    await provision(edge.store, "a2", PASSWORD)
    first, second = RegisterClient(edge.port, "a1", PASSWORD), RegisterClient(edge.port, "a2", PASSWORD)
    try:
        one = (await first.send(first.request())).first("WWW-Authenticate") or ""
        two = (await second.send(second.request())).first("WWW-Authenticate") or ""
        await redis.execute_command("CLIENT", "PAUSE", 1500, "ALL")   # the first one waits on Redis
        waiting = asyncio.create_task(first.send(first.request(authorization=first.authorization(one))))
        await asyncio.sleep(0.3)
        busy = await second.send(second.request(authorization=second.authorization(two)))
        assert busy.code == 503 and busy.first("Retry-After") == "5"
        assert (await waiting).code == 200   # answered once Redis is back
    finally:
        first.close()
        second.close()


async def test_malformed_registers_get_a_clear_answer_and_change_nothing(registrar: RegistrarEdge) -> None:
    phone = RegisterClient(registrar.port, "a1", PASSWORD)
    other = RegisterClient(registrar.port, "a1", PASSWORD, domain="elsewhere.test")
    bad_aor = RegisterClient(registrar.port, "../etc", PASSWORD)
    try:
        many = ", ".join(f"<sip:a1@10.0.0.{i}>" for i in range(25))
        cases = {
            "too many contacts": (phone, phone.request(contact=many)),
            "Contact: * with an expiry": (phone, phone.request(contact="*", expires=60)),
            "negative expiry": (phone, phone.request(contact="<sip:a1@10.0.0.1>;expires=-5")),
            "another domain": (other, other.request()),
            "not an agent id": (bad_aor, bad_aor.request()),
            "another scheme": (phone, phone.request(authorization='Basic YTE6cGFzcw==')),
            "unknown algorithm": (phone, phone.request(authorization=(
                'Digest username="a1", realm="callcenter", nonce="1.00.aa", uri="sip:x", response="00", '
                'algorithm=SHA-512-256'))),
            "huge header": (phone, phone.request(authorization="Digest " + 'x="y", ' * 1000)),
        }
        answers = {name: (await client.send(data)).code for name, (client, data) in cases.items()}
    finally:
        phone.close()
        other.close()
        bad_aor.close()
    assert answers == {"too many contacts": 403, "Contact: * with an expiry": 400, "negative expiry": 400,
                       "another domain": 404, "not an agent id": 404, "another scheme": 401,
                       "unknown algorithm": 401, "huge header": 400}
    assert await registrar.regs.bindings("a1") == []
    # and it still registers a phone that asks properly
    good = RegisterClient(registrar.port, "a1", PASSWORD)
    try:
        assert (await good.register()).code == 200
    finally:
        good.close()
