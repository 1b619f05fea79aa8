"""A client transaction's CANCEL and 408 after `lazy_transactions` (issue 15): not built when the
request is sent, and when read, the same text as sippy's eager ones built at sending time, even
after the UA's objects that the request shares changed (the To tag a 180 sets on the dialog).

Run in a child process: importing sippy binds its reactor to the importing thread."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    from callcenter_sip_edge.sippy import patches, lazy_transactions
    patches.apply_patches()
    from sippy.SipAddress import SipAddress
    from sippy.SipContact import SipContact
    from sippy.SipFrom import SipFrom
    from sippy.SipRoute import SipRoute
    from sippy.SipTo import SipTo
    from sippy.SipCallId import SipCallId
    from sippy.SipRequest import SipRequest
    from sippy.SipTransactionManager import SipTransactionManager
    from sippy.SipURL import SipURL
    from sippy.MsgBody import MsgBody

    HERE = (("198.51.100.2", 5070), "udp")

    class Server:   # what newTransaction asks of the socket it sends through
        transport = "udp"
        def getSIPaddr(self):
            return HERE

    sent = []
    tm = SipTransactionManager.__new__(SipTransactionManager)
    tm.tclient = {}
    tm.transmitData = lambda userv, data, address, *a, **k: sent.append(data)

    def request(method, to_tag=None, routes=()):
        to = SipTo(address=SipAddress(url=SipURL("sip:a0001@192.0.2.8:5062"), name="Agent"))
        if to_tag:
            to.setTag(to_tag)
        fr0m = SipFrom(address=SipAddress(url=SipURL("sip:queue@192.0.2.1")))
        fr0m.genTag()
        req = SipRequest(method=method, ruri=SipURL("sip:a0001@192.0.2.8:5062"), to=to, fr0m=fr0m,
                         cseq=17, callid=SipCallId(), contact=SipContact(), routes=routes,
                         target=(("192.0.2.8", 5062), "udp"), user_agent="callcenter")
        if method == "INVITE":
            req.setBody(MsgBody("v=0\\r\\no=- 1 1 IN IP4 192.0.2.1\\r\\ns=-\\r\\nc=IN IP4 192.0.2.1\\r\\nt=0 0\\r\\n"
                                "m=audio 4000 RTP/AVP 0\\r\\n"))
        return req

    checked = 0
    routes = (SipRoute(address=SipAddress(url=SipURL("sip:proxy@192.0.2.3;lr"))),)
    for method, to_tag, route_set in (("INVITE", None, ()), ("INVITE", "t1", routes), ("BYE", "t2", ())):
        req = request(method, to_tag, route_set)
        # sippy's own, built now (the eager way): unpatched genCANCEL / genResponse via a plain call
        eager_408 = req.genResponse(408, "Request Timeout", server=None).localStr(HERE)
        eager_cancel = req.genCANCEL().localStr(HERE) if method == "INVITE" else None
        t = tm.newTransaction(req, resp_cb=lambda *a: None, userv=Server())
        t.teA.cancel(); t.teB.cancel()
        assert type(t.__dict__["cc_r408"]).__name__ == "_Later", t.__dict__.get("cc_r408")
        assert (t.__dict__["cc_cancel"] is None) == (method != "INVITE")
        req.getHFBody("to").setTag("changed-after-sending")   # the UA's rUri, shared with the request
        req.getHFBody("from").setTag("changed-too")
        assert t.r408.localStr(HERE) == eager_408, (t.r408.localStr(HERE), eager_408)
        assert t.r408 is t.r408   # built once
        if method == "INVITE":
            assert t.cancel.localStr(HERE) == eager_cancel, (t.cancel.localStr(HERE), eager_cancel)
            assert t.cancel.getTarget() == (("192.0.2.8", 5062), "udp")
        else:
            assert t.cancel is None
        t.cleanup()
        assert t.cancel is None and t.r408 is None
        # any other genResponse / genCANCEL is sippy's own, built at once
        assert type(req.genResponse(408, "Request Timeout")).__name__ == "SipResponse"
        checked += 1
    print("ok", checked, len(sent))
""")


def test_cancel_and_408_built_when_read_are_the_eager_ones() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "ok 3 3"
