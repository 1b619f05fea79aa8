"""A finished sippy transaction, trimmed by `sippy.memory` to what is still read, still reads None
for every field sippy's own cleanup leaves at None (its timers teA..teG, callbacks, userv, ...).

sippy reads some of them after a transaction is over: `handleIncoming` tests `t.teA`, `teD`, `teE`
and `teF` of a request its consumer answered, and our callbacks may have finished that transaction
meanwhile. The trimmed instance no longer holds them; the class answers None in its place.

Run in a child process: importing sippy binds its reactor to the importing thread."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import json
    from callcenter_sip_edge.sippy import memory, patches
    patches.apply_patches()
    from sippy.SipTransactionManager import SipTransaction, TRYING

    t = SipTransaction()
    t.state, t.method, t.data = TRYING, "BYE", b"BYE sip:a@192.0.2.1 SIP/2.0\\r\\n\\r\\n"
    t.teA = t.teD = t.teE = t.teF = object()
    t.userv = object()
    t.cleanup()
    cleared = memory.READ_AS_NONE_WHEN_FINISHED
    print(json.dumps({
        "held": sorted(vars(t)),
        "cleared": cleared,
        "reads": {name: repr(getattr(t, name)) for name in cleared},
        # the test sippy's handleIncoming makes after its consumer answered a request
        "timers_left": t.teA != None or t.teD != None or t.teE != None or t.teF != None,  # noqa: E711
        "data": repr(t.data),
    }))
""")


def _run() -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_finished_transaction_reads_none_where_sippys_cleanup_left_none() -> None:
    seen = _run()
    assert set(seen["held"]) <= {"state", "method", "uack", "cancelPending", "needack", "compact", "resp_cb"}
    assert {"teA", "teB", "teC", "teD", "teE", "teF", "teG", "userv", "ack_cb"} <= set(seen["cleared"])
    assert set(seen["reads"].values()) == {"None"}
    assert seen["timers_left"] is False
    assert seen["data"] == "None"   # the rendered message is gone, not kept
