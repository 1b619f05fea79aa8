"""Issue 15, agent BYE -> next INVITE: nothing on the path waits for a batch to fill.

- a command runs at once, as a turn of the reactor on the loop's thread (test_sip_edge_contract;
  a batch of datagrams is one loop callback of at most UDP_DRAIN_BATCH, tests/sip/test_sip_edge_one_thread);
- the dispatcher reads the reports with no linger by default (`CC_READ_LINGER_MS` 0);
- a datagram's arrival is the kernel's receive stamp (what the bench's socket wait is read from).
"""

from __future__ import annotations

import socket
import sys
import time

import pytest

from callcenter.settings import DispatcherSettings


def test_the_dispatcher_reads_reports_without_lingering_by_default() -> None:
    assert DispatcherSettings().read_linger_ms == 0


@pytest.mark.skipif(sys.platform != "linux", reason="the kernel's receive stamps are read on Linux only")
def test_a_datagrams_arrival_is_the_kernels_receive_stamp_not_the_reading() -> None:
    """The edge's hop 'datagram received' (and its per-source INVITE rate) counts from the kernel's
    stamp: Python 3.11 does not name SO_TIMESTAMPNS, and the read time was used instead."""
    from callcenter_sip_edge.sippy import transport

    assert transport._SO_TIMESTAMPNS is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as edge, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        edge.bind(("127.0.0.1", 0))
        edge.setsockopt(socket.SOL_SOCKET, transport._SO_TIMESTAMPNS, 1)
        peer.sendto(b"OPTIONS", edge.getsockname())
        time.sleep(0.05)   # the datagram waits in the socket at least this long
        _data, ancillary, _flags, _address = edge.recvmsg(64, transport._TIMESTAMP_CMSG_BYTES)
        mono_now = time.monotonic()
        arrived = transport._arrival(ancillary, mono_now - time.time(), mono_now)
    assert mono_now - arrived.monot >= 0.045
