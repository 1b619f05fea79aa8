"""What the sip-edge's screening does with a datagram before sippy parses it (screening.py): pass,
drop, or a 400 built from the request's own headers. Every answer below is checked outright; the
compact header names, folded lines, header names in any case or with blanks before the colon,
and headers the screening does not look at (collected no more since issue 15) are among them."""

from __future__ import annotations

import pytest

from callcenter_sip_edge.screening import PASS, screen_datagram

MAX = 4096
VIA = "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1"


def message(*headers: str, start: str = "INVITE sip:support@192.0.2.9 SIP/2.0", body: str = "",
            eol: str = "\r\n") -> bytes:
    return eol.join([start, *headers, "", body]).encode()


FULL = (VIA, "From: <sip:a@192.0.2.1>;tag=1", "To: <sip:support@192.0.2.9>", "Call-ID: c1@192.0.2.1",
        "CSeq: 1 INVITE", "Contact: <sip:a@192.0.2.1>", "Content-Type: application/sdp", "Max-Forwards: 70",
        "Content-Length: 0")


@pytest.mark.parametrize("data", [
    message(*FULL),
    message(*FULL, start="SIP/2.0 200 OK"),
    message(*FULL, eol="\n"),   # bare LF line ends
    # compact forms, names in any case, a blank before the colon, a folded value
    message("v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-2", "f: <sip:a@192.0.2.1>;tag=1",
            "T: <sip:support@192.0.2.9>", "i: c2", "CSEQ : 2 INVITE", "Subject: a",
            " folded continuation", "m: <sip:a@192.0.2.1>", "l: 0"),
    # many headers the screening does not look at, some repeated: not its concern
    message(*FULL, *(f"X-Extra-{n}: {n}" for n in range(40)), "Record-Route: <sip:p1;lr>",
            "Record-Route: <sip:p2;lr>", VIA.replace("-1", "-2")),
], ids=["request", "response", "lf", "compact", "other_headers"])
def test_well_formed_messages_pass(data: bytes) -> None:
    assert screen_datagram(data, MAX) is PASS


def without(name: str) -> list[str]:
    return [h for h in FULL if not h.lower().startswith(name)]


@pytest.mark.parametrize(("data", "why", "reply_has"), [
    (message(*without("call-id")), "Missing Call-ID", ["SIP/2.0 400 Bad Request - Missing Call-ID", VIA]),
    (message(*without("from")), "Missing From", ["400 Bad Request - Missing From", "To: <sip:support"]),
    # a second Call-ID, once in its compact form
    (message(*FULL, "i: other"), "Repeated Call-ID", ["400 Bad Request - Repeated Call-ID", "Call-ID: c1@"]),
    (message(*FULL, "cseq: 9 INVITE"), "Repeated CSeq", ["Repeated CSeq", "CSeq: 1 INVITE"]),
    (message(*[h if not h.startswith("CSeq") else "CSeq: one INVITE" for h in FULL]), "Bad CSeq", ["Bad CSeq"]),
    (message(*FULL, "Subject: a\rb"), "Bare CR", ["Bare CR"]),   # a CR that ends no line
])
def test_a_request_it_can_answer_gets_a_400_from_its_own_headers(data: bytes, why: str, reply_has: list[str]) -> None:
    screening = screen_datagram(data, MAX)
    assert screening.drop_reason == why
    assert screening.reply is not None
    reply = screening.reply.decode()
    assert reply.endswith("Content-Length: 0\r\n\r\n")
    for text in reply_has:
        assert text in reply, (text, reply)


@pytest.mark.parametrize(("data", "why"), [
    (b"x" * (MAX + 1), "oversized"),
    (b"\r\n\r\n", ""),                 # a keep-alive: dropped without a word
    (b"INVITE sip:a SIP/2.0\r\n", "too_short"),
    (message(*FULL).replace(b"support", b"supp\xffort"), "not_utf8"),
    (message(*FULL, start="INVITE sip:support@192.0.2.9 SIP/3.0"), "bad_start_line"),
    (message(*without("via")), "missing_via"),
    (message(*without("call-id"), start="SIP/2.0 200 OK"), "missing_headers"),    # a response: never answered
    (message(*FULL, "Call-ID: again", start="ACK sip:support@192.0.2.9 SIP/2.0"), "repeated_headers"),
])
def test_what_it_cannot_answer_is_dropped_with_the_reason(data: bytes, why: str) -> None:
    screening = screen_datagram(data, MAX)
    assert screening.drop_reason == why and screening.reply is None


def test_only_the_head_is_screened() -> None:
    """A body line that looks like a header is not one (the head ends at the first blank line)."""
    data = message(*FULL, body="Call-ID: in-the-body\r\nCSeq: x\r\n")
    assert screen_datagram(data, MAX) is PASS
