"""Framing of SIP over TCP/TLS by Content-Length (`callcenter_sip_edge.sippy.streams.Connection.feed`),
without sockets: messages split across reads or sharing one, keep-alives, the breaches that close
a connection, and the Via alias a connection is found again by.
"""

from __future__ import annotations

from typing import Any

from callcenter_sip_edge.sippy.streams import Connection, StreamOptions, StreamServer


class _Streams:
    """What a Connection asks of its StreamTransports, recorded."""

    def __init__(self, **limits: Any) -> None:
        self.options = StreamOptions(tcp_port=0, **limits)
        self.delivered: list[bytes] = []
        self.aliases: list[tuple[str, int]] = []
        self.closed: list[str] = []
        self.log = self

    def deliver(self, message: bytes, conn: Connection) -> None:
        self.delivered.append(message)

    def add_alias(self, conn: Connection, address: tuple[str, int]) -> None:
        conn.aliases.add(address)
        self.aliases.append(address)

    def forget(self, conn: Connection) -> None:
        pass

    def emit(self, level: str, event: str, cause: str, **fields: Any) -> bool:
        self.closed.append(cause)
        return True


class _Writer:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        pass


def _connection(**limits: Any) -> tuple[Connection, _Streams, _Writer]:
    streams = _Streams(**limits)
    conn = Connection(StreamServer("tcp", streams, ("127.0.0.1", 5060)), outgoing=False)  # type: ignore[arg-type]
    conn.peer = ("127.0.0.1", 40000)
    writer = _Writer()
    conn.writer = writer  # type: ignore[assignment]
    conn.up()
    return conn, streams, writer


def _request(body: bytes = b"", *, via_host: str = "127.0.0.1", length_header: str = "Content-Length") -> bytes:
    return (b"OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\n"
            + f"Via: SIP/2.0/TCP {via_host}:5070;branch=z9hG4bK1\r\n".encode()
            + b"Call-ID: c1\r\nCSeq: 1 OPTIONS\r\n"
            + f"{length_header}: {len(body)}\r\n\r\n".encode() + body)


def test_messages_split_across_reads_and_sharing_one_are_delivered_whole() -> None:
    conn, streams, _ = _connection()
    first, second = _request(b"v=0\r\n"), _request(length_header="l")
    data = first + second
    for chunk in (data[:7], data[7:len(first) - 2], data[len(first) - 2:]):
        conn.feed(chunk)
    assert streams.delivered == [first, second]
    assert conn.message_started is None and not conn.closed


def test_crlf_before_a_start_line_is_skipped_and_a_double_crlf_gets_a_pong() -> None:
    conn, streams, writer = _connection()
    conn.feed(b"\r\n\r\n")
    conn.feed(b"\r\n" + _request())
    assert writer.sent == [b"\r\n"]
    assert streams.delivered == [_request()]


def test_breaches_close_the_connection_with_their_cause() -> None:
    cases = {
        "garbage": b"\x16\x03\x01 not sip\r\n",
        "oversize": _request(b"x" * 2000),
        "bad_content_length": _request().replace(b"Content-Length: 0\r\n", b""),
    }
    for cause, data in cases.items():
        conn, streams, _ = _connection(max_message_bytes=1024)
        conn.feed(data)
        assert (conn.closed, streams.closed, streams.delivered) == (True, [cause], []), cause


def test_a_via_naming_the_connections_ip_becomes_its_alias_another_ip_does_not() -> None:
    conn, streams, _ = _connection()
    conn.feed(_request(via_host="10.0.0.9"))
    conn.feed(_request())
    assert streams.aliases == [("127.0.0.1", 5070)]


def test_a_content_length_that_is_not_the_last_header_frames_the_message() -> None:
    """linphone (belle-sip) puts Authorization after Content-Length: the length is found on any line
    of the head, its CRLF included, not only on the last one."""
    conn, streams, _ = _connection()
    body = b"v=0\r\n"
    message = (b"REGISTER sip:callcenter.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK2\r\n"
               b"Call-ID: c2\r\nCSeq: 2 REGISTER\r\n"
               + f"Content-Length: {len(body)}\r\n".encode()
               + b"Authorization: Digest username=\"a1\", realm=\"callcenter\"\r\n\r\n" + body)
    conn.feed(message + _request())
    assert streams.delivered == [message, _request()]
    assert streams.closed == [] and not conn.closed
