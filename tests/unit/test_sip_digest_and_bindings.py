"""Pure parts of the registrar: digest credentials (RFC 2617/8760 vectors), stateless nonces, nc
replays, failure windows, and which address a registered contact is rung at."""

from __future__ import annotations

import hashlib

from callcenter.sip_credentials import credentials, ha1
from callcenter_sip_edge.digest import (
    Credentials,
    NonceCounts,
    Nonces,
    challenge,
    expected_response,
    parse_authorization,
    response_matches,
)
from callcenter_sip_edge.registrations import Binding, FailureLimiter


def test_rfc2617_example_response() -> None:
    # RFC 2617 3.5 (HTTP, but the computation is the same): Mufasa / Circle Of Life
    creds = Credentials(username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                        uri="/dir/index.html", response="6629fae49393a05397450978507c4ef1", algorithm="MD5",
                        qop="auth", nc="00000001", cnonce="0a4f113b")
    key = ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life")
    assert expected_response(creds, key, "GET") == creds.response
    assert response_matches(creds, key, "GET")
    assert not response_matches(creds, ha1("MD5", "Mufasa", "testrealm@host.com", "wrong"), "GET")
    assert not response_matches(creds, None, "GET")   # unknown user: compared, and refused


def test_credentials_keep_only_hashes() -> None:
    record = credentials("a1", "callcenter", "s3cret-pass")
    assert record["ha1_sha256"] == hashlib.sha256(b"a1:callcenter:s3cret-pass").hexdigest()
    assert record["ha1_md5"] == hashlib.md5(b"a1:callcenter:s3cret-pass").hexdigest()
    assert "s3cret-pass" not in "".join(record.values())


def test_authorization_header_parsing() -> None:
    parsed = parse_authorization('Digest username="a1",realm="r",nonce="n",uri="sip:x",response="AB",'
                                 'algorithm=SHA-256,qop=auth,nc=00000002,cnonce="c"')
    assert parsed is not None and (parsed.algorithm, parsed.nc, parsed.response) == ("SHA-256", "00000002", "ab")
    assert parse_authorization('Basic YWxhZGRpbjpvcGVuc2VzYW1l') is None
    assert parse_authorization('Digest username="a1",realm="r",nonce="n",uri="sip:x",response="x",'
                               'algorithm=SHA-512-256') is None
    assert parse_authorization('Digest username="a1",realm="r",nonce="n",uri="sip:x",response="x",qop=auth') is None
    assert parse_authorization("Digest " + "x=" * 5000) is None


def test_nonces_are_verified_without_state_and_go_stale() -> None:
    nonces = Nonces(b"k" * 32, ttl_s=60)
    nonce = nonces.issue(now=1000.0)
    assert nonces.check(nonce, now=1030.0) == "ok"
    assert nonces.check(nonce, now=1061.0) == "stale"
    assert Nonces(b"k" * 32, ttl_s=60).check(nonce, now=1030.0) == "ok"      # another edge, same secret
    assert Nonces(b"j" * 32, ttl_s=60).check(nonce, now=1030.0) == "bad"     # another secret
    assert nonces.check("1000000.abc", now=1030.0) == "bad"
    assert nonces.issue(now=1000.0) != nonces.issue(now=1000.0)   # unique within a millisecond
    assert nonces.check("garbage", now=1030.0) == "bad"
    assert all('qop="auth"' in c for c in challenge("r", nonce, ("SHA-256", "MD5"), stale=True))


def test_nonce_counts_refuse_replays_and_stay_bounded() -> None:
    counts = NonceCounts(capacity=2)
    assert counts.fresh("n1", "00000001") and not counts.fresh("n1", "00000001")
    assert counts.fresh("n1", "00000002")
    counts.fresh("n2", "00000001")
    counts.fresh("n3", "00000001")   # n1 forgotten: only its replay check is lost
    assert counts.fresh("n1", "00000001")


def test_failure_windows() -> None:
    now = [0.0]
    limiter = FailureLimiter(2, clock=lambda: now[0])
    limiter.failed("aor:a1")
    assert limiter.retry_after("aor:a1") is None
    limiter.failed("aor:a1")
    assert limiter.retry_after("aor:a1") == 60
    now[0] = 45.0
    assert limiter.retry_after("aor:a1") == 15
    now[0] = 60.0
    assert limiter.retry_after("aor:a1") is None


def _binding(uri: str, received: str, transport: str = "udp") -> Binding:
    return Binding(uri=uri, received=received, transport=transport, expiry_ms=0)


def test_which_address_a_contact_is_rung_at() -> None:
    # reachable as it says
    assert _binding("sip:a1@203.0.113.5:5062", "203.0.113.5:5062").target() == "sip:a1@203.0.113.5:5062"
    assert _binding("sip:a1@203.0.113.5:5070", "203.0.113.5:40000").target() == "sip:a1@203.0.113.5:5070"
    # behind NAT: a private Contact, the REGISTER from a public address
    assert _binding("sip:a1@192.168.1.20:5060;ob", "198.51.100.7:61234").target() == \
        "sip:a1@198.51.100.7:61234;transport=udp"
    assert _binding("sip:a1@phone.local", "198.51.100.7:5060").target() == "sip:a1@198.51.100.7:5060;transport=udp"
    # over a stream: back over the connection it came on
    assert _binding("sip:a1@10.0.0.2:5060;transport=tcp", "198.51.100.7:50123", "tcp").target() == \
        "sip:a1@198.51.100.7:50123;transport=tcp"
    assert _binding("sips:a1@10.0.0.2", "[2001:db8::1]:5061", "tls").target() == \
        "sip:a1@[2001:db8::1]:5061;transport=tls"
