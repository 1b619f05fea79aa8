"""sippy's message methods after `message_costs` (issue 15: the SIP thread's Python per message) give
what sippy's own give: for every message of a recorded queued call and for messages written to reach
the corners of each replaced method (folded and compact headers, several values in one header line,
a line without a colon, a missing required header, URLs with user parameters, password, URI headers,
IPv6 hosts, lr/maddr/ttl/transport/user parameters, quoted display names, `Contact: *`, LF-only
lines), parsed, read, copied and rendered both ways: the same headers, the same text, the same copies
and the same exceptions.

Run in a child process: importing sippy binds its reactor to the importing thread."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

RECORDED = Path(__file__).resolve().parents[2] / "bench" / "sip_messages" / "queued_call.json"

_HEAD = ("Via: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK-a1;rport\r\n"
         "From: \"Ann O'Neil\" <sip:ann@example.com>;tag=f1\r\n"
         "To: <sip:queue@192.0.2.1>\r\n"
         "Call-ID: c1@192.0.2.7\r\n"
         "CSeq: 7 INVITE\r\n")
_SDP = "v=0\r\no=- 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"

CORNERS = [
    # folded lines, compact names, an unknown header, a body
    "INVITE sip:queue@192.0.2.1 SIP/2.0\r\n" + _HEAD + "Subject: a\r\n  folded\r\n\tand tabbed\r\n"
    "m: <sip:ann@192.0.2.7:5062;transport=TCP>\r\nX-Cc-Flow: sales\r\nc: application/sdp\r\nl: "
    f"{len(_SDP)}\r\n\r\n" + _SDP,
    "OPTIONS sip:queue@192.0.2.1 SIP/2.0\r\nv: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK-c\r\nf: sip:a@b;tag=1\r\n"
    "t: sip:q@c\r\ni: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
    # several values in one line: two Vias, two Contacts, two Routes
    "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1, SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK-2\r\n"
    "From: <sip:queue@192.0.2.1>;tag=a\r\nTo: <sip:agent@192.0.2.8>;tag=b\r\nCall-ID: c2\r\nCSeq: 1 INVITE\r\n"
    "Contact: <sip:agent@192.0.2.8>, \"B, C\" <sip:b@192.0.2.8;lr>\r\n"
    "Record-Route: <sip:p1@192.0.2.3;lr>, <sip:p2@192.0.2.4;lr;maddr=239.1.1.1;ttl=3>\r\n\r\n",
    # URL corners: user parameters, password, URI headers, IPv6, user=phone, escaped user part
    "INVITE sip:+15551234;ext=9@192.0.2.1;user=phone SIP/2.0\r\n" + _HEAD.replace("CSeq: 7", "CSeq: 8") +
    "Contact: <sip:bob:secret@[2001:db8::1]:5070;transport=udp;foo=bar?Subject=hi%20there&X=1>\r\n"
    "Route: <sip:a%23b@192.0.2.5;lr;method=INVITE>\r\nMax-Forwards: 69\r\nContent-Length: 0\r\n\r\n",
    # Contact: * and an Expires (a REGISTER that removes every binding)
    "REGISTER sip:192.0.2.1 SIP/2.0\r\n" + _HEAD.replace("INVITE", "REGISTER") +
    "Contact: *\r\nExpires: 0\r\nContent-Length: 0\r\n\r\n",
    # LF-only lines
    ("BYE sip:agent@192.0.2.8 SIP/2.0\n" + _HEAD.replace("\r\n", "\n").replace("INVITE", "BYE") +
     "Content-Length: 0\n\n"),
    # broken: no colon in a header line, a required header missing, an empty header value
    "INVITE sip:q@192.0.2.1 SIP/2.0\r\n" + _HEAD + "Garbage line\r\n\r\n",
    "INVITE sip:q@192.0.2.1 SIP/2.0\r\n" + _HEAD.replace("To: <sip:queue@192.0.2.1>\r\n", "") + "\r\n",
    "INVITE sip:q@192.0.2.1 SIP/2.0\r\n" + _HEAD + "Subject:\r\nContent-Length: 0\r\n\r\n",
    "INVITE sip:q@192.0.2.1 SIP/2.0\r\n" + _HEAD.replace("From: ", "From:\r\n ") + "\r\n",
]

CHILD = textwrap.dedent("""
    import json, sys
    from callcenter_sip_edge.sippy import patches, message_costs
    patches.apply_patches()
    from sippy.SipAddress import SipAddress
    from sippy.SipHeader import SipHeader
    from sippy.SipMsg import SipMsg
    from sippy.SipRequest import SipRequest
    from sippy.SipResponse import SipResponse
    from sippy.SipURL import SipURL

    classes = {"SipHeader": SipHeader, "SipMsg": SipMsg, "SipURL": SipURL, "SipAddress": SipAddress}
    replaced = {key: getattr(classes[key.split(".")[0]], key.split(".")[1]) for key in message_costs.ORIGINALS}
    assert len(replaced) == 11, sorted(replaced)

    def use(which):
        for key, original in message_costs.ORIGINALS.items():
            cls, attr = key.split(".")
            setattr(classes[cls], attr, original if which == "sippy" else replaced[key])

    def attempt(f):
        try:
            return ["ok", f()]
        except Exception as exc:
            return ["raised", type(exc).__name__, str(exc)]

    def url_fields(url):
        return sorted((k, repr(v)) for k, v in vars(url).items())

    HERE = (("198.51.100.2", 5070), "udp")

    def outcome(text):
        kind = SipResponse if text.startswith("SIP/2.0 ") else SipRequest
        parsed = attempt(lambda: kind(text))
        if parsed[0] != "ok":
            return parsed
        msg = parsed[1]
        out = {"names": [h.name for h in msg.headers], "raw": str(msg)}
        out["bodies"] = [attempt(lambda h=h: str(h.getBody())) for h in msg.headers]
        out["str"], out["here"] = str(msg), msg.localStr(HERE)
        out["compact"] = msg.localStr(None, compact=True)
        for name in ("via", "from", "to", "contact", "route", "record-route", "expires", "nothing"):
            out["count " + name] = msg.countHFs(name)
            for idx in (0, 1, 2, -1):
                out[f"body {name} {idx}"] = attempt(lambda: str(msg.getHFBody(name, idx)))
                out[f"bcopy {name} {idx}"] = attempt(lambda: str(msg.getHFBCopy(name, idx)))
            out["hf " + name] = attempt(lambda: str(msg.getHF(name)))
        copies = [h.getCopy() for h in msg.headers]
        out["copies"] = [[c.__class__.__name__, c.name, c.localStr(HERE), str(c)] for c in copies]
        out["urls"] = []
        for h in msg.headers:
            address = getattr(h.getBody(), "address", None)
            if isinstance(address, SipAddress):
                url, acopy = address.url.getCopy(), address.getCopy()
                out["urls"].append([url_fields(url), url.localStr(), url.localStr(HERE), str(acopy),
                                    acopy.localStr(HERE), url_fields(acopy.url), sorted(acopy.params.items()),
                                    acopy.params_order, acopy.hadbrace, acopy.name])
        out["ruri"] = str(msg.getRURI()) if kind is SipRequest else None
        out["response"] = (attempt(lambda: msg.genResponse(200, "OK", server="x").getCopy().localStr(HERE))
                           if kind is SipRequest else None)
        return out

    texts = json.load(sys.stdin)
    results = {}
    for which in ("sippy", "patched"):
        use(which)
        results[which] = [outcome(text) for text in texts]
    use("patched")
    differ = [i for i, (a, b) in enumerate(zip(results["sippy"], results["patched"])) if a != b]
    first = [results["sippy"][i] for i in differ[:1]] + [results["patched"][i] for i in differ[:1]]
    print(json.dumps({"differ": differ, "outcomes": results["patched"], "first": first}))
""")


def test_the_cheaper_methods_give_what_sippys_give() -> None:
    recorded = [message["text"] for message in json.loads(RECORDED.read_text())["messages"]]
    texts = recorded + CORNERS
    done = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(texts), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["differ"] == [], json.dumps(result["first"], indent=1)[:4000]
    outcomes = result["outcomes"]
    # the corners were reached: parsed messages with folded and several-valued lines, and refusals
    assert all(o != "raised" and isinstance(o, dict) for o in outcomes[:len(recorded)])
    assert outcomes[len(recorded)]["str"].count("Subject: a folded and tabbed") == 1
    assert outcomes[len(recorded) + 2]["count via"] == 2 and outcomes[len(recorded) + 2]["count contact"] == 2
    assert outcomes[-4][:2] == ["raised", "ValueError"]
    assert outcomes[-3] == ["raised", "Exception", "To HF is missed"]
    assert "[2001:db8::1]" in json.dumps(outcomes[len(recorded) + 3]["urls"])
