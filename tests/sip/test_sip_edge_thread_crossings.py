"""Issue 15: a running edge hands the GIL between its SIP thread and its asyncio thread quickly.

Every hop of an agent's BYE -> next INVITE crosses the two threads (the fact to the loop, the ring
command back to the reactor); a thread woken while the other one works waits for the GIL until that
one blocks or the interpreter's switch interval runs out (5 ms by default). The stack sets it when
it starts (`sip_stack.SWITCH_INTERVAL_S`).
"""

from __future__ import annotations

import asyncio
import socket
import sys

from callcenter_dev.servers import free_port
from callcenter_sip_edge.sip_stack import SWITCH_INTERVAL_S, SipStack


def test_a_started_stack_sets_the_switch_interval_to_a_millisecond() -> None:
    assert SWITCH_INTERVAL_S <= 0.001

    async def started_interval() -> float:
        stack = SipStack(host="127.0.0.1", port=free_port(socket.SOCK_DGRAM), on_fact=lambda fact: None,
                         loop=asyncio.get_running_loop())
        await asyncio.to_thread(stack.start)
        try:
            return sys.getswitchinterval()
        finally:
            await asyncio.to_thread(stack.stop)

    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)   # the interpreter's default, whatever ran before in this process
    try:
        assert asyncio.run(started_interval()) == SWITCH_INTERVAL_S
    finally:
        sys.setswitchinterval(before)
