"""What one edge owns alone: its SIP port and its id.

The port: the UDP socket is bound without SO_REUSEADDR/SO_REUSEPORT (sippy/transport.py), so a
second process cannot bind a port a running edge holds (Linux would otherwise hand every datagram
to the newest socket). The id: a lease in Redis, `cc:{t}:edge:<id>:lease`, taken at start,
renewed by every heartbeat (`edge_beat.lua`, which also writes the heartbeat) and released at a
clean stop (`edge_release.lua`). Its time to live is the lapse (`CC_EDGE_LAPSE_MS`), so the lease
of an edge that died frees the id as the dispatchers declare it lost.

Reads and writes: the lease key and the heartbeat `cc:{t}:edges`, through those two steps.
"""

from __future__ import annotations

# the process exit code of an edge that refuses to start because another process owns its port or id
# (EX_TEMPFAIL: it clears when the other process is gone)
EXIT_START_REFUSED = 75


class StartRefused(Exception):
    """The edge cannot start: another process owns its SIP port or its id (the message says which)."""
