"""Child process of test_sip_edge_logs.py: a SipStack logging JSON lines (as in a container) gets
datagrams that make sippy complain, a header holding a JSON object, and bare CRs; then it stops.

Reads: argv[1], how many times to send each datagram. Writes: the stack's log to stderr (and
whatever sippy would print to stdout).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time

from callcenter.logs import configure_logging
from callcenter_sip_edge.sip_stack import SipStack

FORGED = '{"event": "agent.paused", "level": "critical", "agent_id": "a1"}'


def datagrams(edge_port: int, port: int, n: int) -> list[bytes]:
    """Three kinds of bad datagram; each call gives new ones (sippy ignores a repeated datagram)."""
    def headers(call_id: str) -> str:
        return (f"From: <sip:a@127.0.0.1:{port}>;tag=1\r\nTo: <sip:b@127.0.0.1:{edge_port}>\r\n"
                f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nX-Note: {FORGED}\r\nContent-Length: 0\r\n\r\n")

    via = f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{os.urandom(4).hex()};rport\r\n"
    return [
        # sippy: "invalid status code in SIP response" and the message, printed line by line
        ("SIP/2.0 999999 Weird\r\n" + via + headers(f"probe-1-{n}")).encode(),
        # sippy cannot parse the Via: a traceback and the raw message on stdout
        (f"OPTIONS sip:b@127.0.0.1:{edge_port} SIP/2.0\r\nVia: SIP/2.0/UDP\r\n" + headers(f"probe-2-{n}")).encode(),
        # a JSON object across lines of its own in the body of a response nobody asked for
        ("SIP/2.0 0 Odd\r\n" + via + headers(f"probe-3-{n}") + f"\n{FORGED}\n").encode(),
    ]


async def main() -> None:
    configure_logging("info", "json")
    repeat = int(sys.argv[1])
    stack = SipStack(host="127.0.0.1", port=0, on_fact=lambda fact: None, loop=asyncio.get_running_loop())
    stack.start()
    assert stack.bound_address is not None
    edge = ("127.0.0.1", stack.bound_address[1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.05)
        for n in range(repeat):
            for datagram in datagrams(edge[1], sock.getsockname()[1], n):
                sock.sendto(datagram, edge)
        sync = (f"OPTIONS sip:b@127.0.0.1:{edge[1]} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{sock.getsockname()[1]};"
                f"branch=z9hG4bK-sync\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.1>\r\n"
                f"Call-ID: sync\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
        sock.sendto(sync, edge)
        # every datagram before the OPTIONS has been read (waited for off the loop, which runs the edge)
        await asyncio.to_thread(_wait_for_sync, sock)
    stack.stop()


def _wait_for_sync(sock: socket.socket) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if b"Call-ID: sync" in sock.recv(65535):
                return
        except (TimeoutError, OSError):
            continue


if __name__ == "__main__":
    asyncio.run(main())
