"""A witness on the wire: the kernel's send times of the SIP datagrams to and from one UDP port.

SIPp's `[clock_tick]` moves in steps of the kernel's coarse clock (4 ms on these machines,
CONFIG_HZ=250: every tick SIPp logs is a multiple of 4 ms), so "agent BYE -> next INVITE" read from
the agents' SIPp is a difference of two stamps that are each up to 4 ms late: it cannot tell 3 ms
from 5. `WireClock` reads the same two datagrams from the loopback interface instead, as a packet
capture would: a packet socket on `lo` (needs CAP_NET_RAW: root here), the kernel's stamp of each
packet (SO_TIMESTAMPNS, ns), a classic BPF filter in the kernel so that only UDP to or from the
port reaches Python (the Redis traffic on `lo` never does). The stamp is taken as loopback hands the
datagram to the receiving side, within the sender's send call: the time it was sent, to a few µs.

    with WireClock(port) as wire:          # the agents' SIPp port
        ...                                  # the calls
    gaps_ms = wire.bye_to_invite_ms()      # per agent: its BYE sent -> the next INVITE to it sent
"""

from __future__ import annotations

import ctypes
import re
import select
import socket
import struct
import threading
import time
from typing import Any

ETH_P_IP = 0x0800
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35
PACKET_HOST = 0

_USER = re.compile(rb"^(?:From|f)\s*:[^\r\n]*?<?sips?:([^@;>\s]+)@", re.IGNORECASE | re.MULTILINE)
_RURI_USER = re.compile(rb"^INVITE sips?:([^@;>\s]+)@")


def _udp_port_filter(port: int) -> tuple[Any, bytes]:
    """Classic BPF over the network header (a SOCK_DGRAM packet socket): UDP with `port` as its source
    or destination passes whole, anything else is dropped in the kernel."""
    insns = [
        (0x30, 0, 0, 9),            # ldb [9]: the IP protocol
        (0x15, 0, 5, 17),           # jeq UDP, else drop
        (0xB1, 0, 0, 0),            # ldxb 4*([0]&0xf): the IP header's length
        (0x48, 0, 0, 0),            # ldh [x+0]: source port
        (0x15, 3, 0, port),         # jeq port -> accept
        (0x48, 0, 0, 2),            # ldh [x+2]: destination port
        (0x15, 1, 0, port),         # jeq port -> accept
        (0x06, 0, 0, 0),            # drop
        (0x06, 0, 0, 0xFFFF),       # accept
    ]
    raw = b"".join(struct.pack("HBBI", *insn) for insn in insns)
    buf = ctypes.create_string_buffer(raw, len(raw))
    prog = struct.pack("HL", len(insns), ctypes.addressof(buf))
    return buf, prog


class WireClock(threading.Thread):
    """Records (kernel send time in s, src port, dst port, payload head) of the UDP datagrams of one port."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True, name="wire-clock")
        self.port = port
        self.packets: list[tuple[float, int, int, bytes]] = []
        self._halt = threading.Event()
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        self._filter_buf, prog = _udp_port_filter(port)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("lo", ETH_P_IP))

    @staticmethod
    def available() -> str | None:
        """None if a packet socket can be opened here, else why not."""
        try:
            socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP)).close()
        except (PermissionError, OSError) as exc:
            return f"no packet socket ({exc}): run as root or with CAP_NET_RAW"
        return None

    def __enter__(self) -> WireClock:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop reading (after the datagrams still in flight) and close the socket."""
        time.sleep(0.2)
        self._halt.set()
        if self.is_alive():
            self.join(2)
        self.sock.close()

    def run(self) -> None:
        sock = self.sock
        while not self._halt.is_set():
            if not select.select([sock], [], [], 0.1)[0]:
                continue
            data, anc, _flags, addr = sock.recvmsg(65535, 64)
            if addr[2] != PACKET_HOST:
                continue
            stamp = 0.0
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", value[:16])
                    stamp = sec + nsec / 1e9
            ihl = (data[0] & 0x0F) * 4
            sport, dport = struct.unpack("!HH", data[ihl:ihl + 4])
            self.packets.append((stamp, sport, dport, data[ihl + 8:ihl + 8 + 1500]))

    def bye_to_invite(self) -> dict[str, list[tuple[float, float]]]:
        """Per agent (the user part of its URI), in order: (the time a BYE was sent from the port with
        the agent's From, the time the next INVITE for the agent (its Request-URI) was sent to it), s."""
        pairs: dict[str, list[tuple[float, float]]] = {}
        last_bye: dict[str, float] = {}
        for stamp, sport, dport, payload in self.packets:
            if sport == self.port and payload.startswith(b"BYE "):
                m = _USER.search(payload)
                if m:
                    last_bye[m.group(1).decode()] = stamp
            elif dport == self.port and payload.startswith(b"INVITE "):
                m = _RURI_USER.match(payload)
                if m and m.group(1).decode() in last_bye:
                    agent = m.group(1).decode()
                    pairs.setdefault(agent, []).append((last_bye.pop(agent), stamp))
        return pairs

    def bye_to_invite_ms(self) -> dict[str, list[float]]:
        """Per agent, in order: ms from its BYE sent to the next INVITE to it sent."""
        return {agent: [(invite - bye) * 1000 for bye, invite in pairs]
                for agent, pairs in self.bye_to_invite().items()}
