"""sippy's local-address placeholder after the patch that keeps the host's address for a second
(patches._host_address_looked_up_once_a_second): the same text as sippy's own lookup, the resolver
asked once per HOST_ADDRESS_TTL_S however often it is rendered, and asked again after it.

Run in a child process: importing sippy binds its reactor to the importing thread."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import socket, time
    from callcenter_sip_edge.sippy import patches
    patches.apply_patches()
    import sippy.SipConf as conf
    from sippy.SipContact import SipContact
    expected = socket.gethostbyname(socket.gethostname())
    lookups = []
    real = conf.gethostbyname
    def counting(name):
        lookups.append(name)
        return real(name)
    conf.gethostbyname = counting   # the module global sippy's MyAddress calls
    contact = SipContact()           # our own Contact, its host the placeholder
    texts = {str(contact) for _ in range(200)}
    assert texts == {str(contact)} and expected in texts.pop(), (expected, str(contact))
    assert len(lookups) <= 1, lookups
    time.sleep(patches.HOST_ADDRESS_TTL_S + 0.1)
    assert str(conf.MyAddress()) == expected
    assert len(lookups) >= 1 and len(lookups) <= 2, lookups
    print("ok")
""")


def test_the_host_address_is_looked_up_once_per_ttl() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")
