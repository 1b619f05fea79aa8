"""CPU per SIP message of the sip-edge's sippy work, measured so that machine load cannot blur it (issue 15).

One process, no sockets, no other thread: the 20 SIP datagrams of one queued call as the edge read
and wrote them (bench/sip_messages/queued_call.json: caller INVITE -> 180, welcome leg, the welcome's
BYE, agent leg, the re-INVITE that connects the caller to the agent, the caller's BYE, the agent's
BYE; recorded with strace on a real edge, see the file's "recorded"), and per message the sippy
operations the edge's SIP thread runs for it:
- a message received: `parse` = SipRequest(text) / SipResponse(text) and the transaction ids
  sippy's transaction manager takes from it (getTIds / getTId); `read` = the header bodies the edge
  and sippy's UA read from it (Via, From and To tags, Call-ID, CSeq, Contact, Max-Forwards, the body,
  an INVITE's SDP parsed as the router does);
- a message sent: `build` = the request as sippy's UA.genRequest builds it (SipRequest from the
  dialog's parsed From/To/Call-ID/Contact, a new Via and branch) or the response as a UAS answers
  (genResponse of the parsed request: its Via/From/To/Call-ID/CSeq copied, To tag, Contact, and the
  copy UA.sendUasResponse takes); `render` = localStr(local address) as the transaction manager
  renders it for the socket (responses, and the ACK of a 2xx); `send` (the other requests) = sippy's
  SipTransactionManager.newTransaction, its socket a no-op: the text rendered, the ACK / CANCEL /
  408 it keeps ready built, timers A and B started and, as the transaction's end would, cancelled.
Each operation is timed with time.process_time() over --reps repetitions, the garbage collector off
inside the loop; the figure is the best of --runs runs (the least disturbed one: CPU time of this
process only, so other processes on the machine can slow a run but cannot add to it; the best of
several removes cache and frequency noise).

Before and after in the same run: each variant is a child process with its own PYTHONPATH: "base" is
a `git archive` of --base (default main) of src/ and services/sip-edge/, "this" is this checkout;
children alternate (base, this, base, this, ...), and every figure is the best over all the runs of
its variant.

    .venv/bin/python bench/sip_message_costs.py                 # base = main, 7 runs per variant
    .venv/bin/python bench/sip_message_costs.py --base HEAD~3 --runs 9
    .venv/bin/python bench/sip_message_costs.py --no-base       # this checkout only
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CALL = ROOT / "bench" / "sip_messages" / "queued_call.json"
LOCAL_ADDR = (("127.0.0.1", 31754), "udp")   # the edge's address in the recording
STEPS_IN, STEPS_OUT = ("parse", "read"), ("build", "render", "send")


class _Server:
    """What sippy's transaction manager asks of the socket a request goes out through."""

    transport = "udp"

    def getSIPaddr(self) -> Any:   # sippy's name
        return LOCAL_ADDR


def _transaction_manager() -> Any:
    """sippy's SipTransactionManager (with the edge's patches), its sending a no-op: newTransaction only."""
    from sippy.SipTransactionManager import SipTransactionManager

    tm = SipTransactionManager.__new__(SipTransactionManager)
    tm.tclient = {}
    tm.transmitData = lambda *args, **kwargs: None
    return tm


# ------------------------------------------------------------------ child: one variant, measured
def _header_of(text: str, name: str) -> str:
    for line in text.split("\r\n")[1:]:
        if line.lower().startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(name)


def _operations(messages: list[dict[str, str]]) -> list[tuple[str, dict[str, Callable[[], Any]]]]:
    """Per message: (label, {step: the operation, ready to be called again and again})."""
    from sippy.SipContact import SipContact
    from sippy.SipHeader import SipHeader
    from sippy.SipRequest import SipRequest
    from sippy.SipResponse import SipResponse

    received: dict[tuple[str, str], Any] = {}   # (Call-ID, CSeq) -> the parsed request, as the UA keeps it
    ops = []
    tm, server = _transaction_manager(), _Server()
    for number, message in enumerate(messages, 1):
        text = message["text"]
        first = text.split("\r\n", 1)[0]
        label = f"{number:2d} {message['direction']:3s} {first.replace(' SIP/2.0', '')[:44]}"
        key = (_header_of(text, "call-id"), _header_of(text, "cseq"))
        if message["direction"] == "in" and not text.startswith("SIP/2.0 "):
            def parse_request(text: str = text) -> Any:
                req = SipRequest(text)
                req.getTIds()
                return req

            def read_request(text: str = text) -> Any:
                req = parse_request(text)
                req.getHFBody("to").getTag()
                req.getHFBody("from").getTag()
                str(req.getHFBody("call-id"))
                req.getHFBody("cseq").getCSeqNum()
                req.getHFBody("via").getTAddr()
                if req.countHFs("max-forwards"):
                    req.getHFBody("max-forwards").getNum()
                if req.countHFs("contact"):
                    req.getHFBody("contact").getUrl()
                body = req.getBody()
                if body is not None and req.getMethod() == "INVITE":
                    body.parse()
                return req

            received[key] = read_request()
            ops.append((label, {"parse": parse_request, "read": read_request}))
        elif message["direction"] == "in":
            def parse_response(text: str = text) -> Any:
                resp = SipResponse(text)
                resp.getTId(True, True)
                return resp

            def read_response(text: str = text) -> Any:
                resp = parse_response(text)
                resp.getSCode()
                resp.getHFBody("to").getTag()
                resp.getHFBody("cseq").getCSeqMethod()
                if resp.countHFs("contact"):
                    resp.getHFBody("contact").getUrl()
                resp.getBody()
                return resp

            ops.append((label, {"parse": parse_response, "read": read_response}))
        elif text.startswith("SIP/2.0 "):
            req = received[key]
            code, reason = first.split(" ", 2)[1:]
            sent = SipResponse(text)
            body = sent.getBody()
            to_tag = sent.getHFBody("to").getTag()
            contact = _header_of(text, "contact") if "\r\nContact:" in text else None

            def build_response(req: Any = req, code: int = int(code), reason: str = reason, body: Any = body,
                               to_tag: str = to_tag, contact: str | None = contact) -> Any:
                resp = req.genResponse(code, reason, body.getCopy() if body is not None else None, server="callcenter")
                resp.getHFBody("to").setTag(to_tag)
                if contact is not None:
                    resp.appendHeader(SipHeader(name="contact", body=SipContact(contact)))
                return resp.getCopy()   # UA.sendUasResponse answers with a copy of its prepared response

            built = build_response()
            ops.append((label, {"build": build_response,
                                "render": lambda built=built: built.localStr(LOCAL_ADDR, compact=False)}))
        else:
            sent = SipRequest(text)
            method = sent.getMethod()
            state = {
                "ruri": sent.getRURI(), "to": sent.getHFBody("to"), "fr0m": sent.getHFBody("from"),
                "callid": sent.getHFBody("call-id"), "cseq": sent.getHFBody("cseq").getCSeqNum(),
                "contact": sent.getHFBody("contact") if sent.countHFs("contact") else None,
                "target": (("127.0.0.1", 5060), "udp"),
            }
            for value in state.values():   # the UA's dialog state is parsed objects
                if hasattr(value, "parsed") and not value.parsed:
                    value.parse()
            body = sent.getBody()

            def build_request(method: str = method, state: dict[str, Any] = state, body: Any = body) -> Any:
                req = SipRequest(method=method, user_agent="callcenter", routes=(), maxforwards=None, **state)
                if body is not None:
                    req.setBody(body.getCopy())
                return req

            def send_request(built: Any) -> str:
                # what sippy's UA does with it: a client transaction (the text rendered, the ACK,
                # CANCEL and 408 it may need prepared, its timers A and B started; cancelled here)
                t = tm.newTransaction(built, resp_cb=lambda *args: None, userv=server)
                t.teA.cancel()
                t.teB.cancel()
                del tm.tclient[t.tid]
                data: str = t.data
                return data

            built = build_request()
            if method == "ACK":   # the ACK of a 2xx goes out from its INVITE's transaction, rendered
                ops.append((label, {"build": build_request,
                                    "render": lambda built=built: built.localStr(LOCAL_ADDR, compact=False)}))
            else:
                ops.append((label, {"build": build_request, "send": lambda built=built: send_request(built)}))
    return ops


def _measure(reps: int) -> dict[str, Any]:
    """{"costs": {label: {step: µs}}, "texts": {label: the message as rendered}} of this process's
    sippy (with the edge's patches), one run. A text is what was built and rendered, or for a
    message received what its parsed and read objects render back to."""
    from callcenter_sip_edge.sippy.patches import apply_patches

    apply_patches()
    messages = json.loads(CALL.read_text())["messages"]
    out: dict[str, dict[str, float]] = {}
    for label, steps in _operations(messages):
        out[label] = {}
        for step, operation in steps.items():
            operation()
            gc.collect()
            gc.disable()   # a collection falls in one operation's loop or another's: noise, not its cost
            t0 = time.process_time()
            for _ in range(reps):
                operation()
            out[label][step] = (time.process_time() - t0) / reps * 1e6
            gc.enable()
    texts = {label: _same_text(steps["render"]() if "render" in steps else steps["send"]() if "send" in steps
                               else str(steps["read"]()))
             for label, steps in _operations(messages)}
    # `read` is timed with its parse (a message is read once parsed): keep only what reading adds
    for steps in out.values():
        if "read" in steps:
            steps["read"] = max(0.0, steps["read"] - steps["parse"])
    return {"costs": out, "texts": texts}


def _same_text(text: str) -> str:
    """`text` with what is random at each build (a new Via branch) blanked."""
    return re.sub(r"branch=z9hG4bK[0-9a-f]{32}", "branch=z9hG4bK*", text)


# ----------------------------------------------------------------- parent: variants, alternated
def _base_tree(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src", "services/sip-edge"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _pythonpath(tree: Path) -> str:
    return os.pathsep.join([str(tree / "src"), str(tree / "services" / "sip-edge")])


def _run_child(tree: Path, reps: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": _pythonpath(tree)}
    done = subprocess.run([sys.executable, __file__, "--child", "--reps", str(reps)], env=env,
                          check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])   # after any log line
    return result


def _best(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {label: {step: min(run[label][step] for run in runs) for step in runs[0][label]} for label in runs[0]}


def _print(variants: dict[str, dict[str, dict[str, float]]]) -> None:
    names = list(variants)
    first = variants[names[0]]
    steps = STEPS_IN + STEPS_OUT
    print(f"\nCPU µs per message (best of the runs); columns per step: {' / '.join(names)}")
    print(f"{'message':48s}" + "".join(f"{step:>18s}" for step in steps) + f"{'total':>18s}")
    totals = {name: {step: 0.0 for step in steps} for name in names}
    for label in first:
        cells = []
        for step in steps:
            if step in first[label]:
                values = [variants[name][label][step] for name in names]
                for name, value in zip(names, values, strict=True):
                    totals[name][step] += value
                cells.append(" / ".join(f"{v:.1f}" for v in values))
            else:
                cells.append("")
        whole = " / ".join(f"{sum(variants[name][label].values()):.1f}" for name in names)
        print(f"{label:48s}" + "".join(f"{c:>18s}" for c in cells) + f"{whole:>18s}")
    print(f"{'per call (20 messages)':48s}" + "".join(
        f"{' / '.join(f'{totals[name][step]:.0f}' for name in names):>18s}" for step in steps) + "{:>18s}".format(
        " / ".join(f"{sum(totals[name].values()):.0f}" for name in names)))
    if len(names) == 2:
        base, this = (sum(totals[name].values()) for name in names)
        print(f"\nper call: {names[0]} {base:.0f} µs, {names[1]} {this:.0f} µs: {100 * (this - base) / base:+.1f} %")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="main", help="git ref of the 'before' (default main)")
    parser.add_argument("--no-base", action="store_true", help="measure this checkout only")
    parser.add_argument("--runs", type=int, default=7, help="runs per variant; the best is kept")
    parser.add_argument("--reps", type=int, default=300, help="repetitions of each operation per run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.reps)))
        return 0
    variants: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="cc-sip-costs-") as tmp:
        if not args.no_base:
            variants[f"base ({args.base})"] = _base_tree(args.base, Path(tmp))
        variants["this"] = ROOT
        runs: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in variants}
        texts: dict[str, dict[str, str]] = {}
        print(f"load {os.getloadavg()[0]:.2f}; {args.runs} runs per variant, {args.reps} repetitions per operation",
              flush=True)
        for _ in range(args.runs):
            for name, tree in variants.items():
                result = _run_child(tree, args.reps)
                runs[name].append(result["costs"])
                texts[name] = result["texts"]
        print(f"load {os.getloadavg()[0]:.2f} at the end")
        _print({name: _best(r) for name, r in runs.items()})
    rendered = list(texts.values())
    if len(rendered) == 2:
        differ = [label for label in rendered[0] if rendered[0][label] != rendered[1][label]]
        print(f"messages rendered differently by the two variants: {len(differ)} of {len(rendered[0])}"
              + "".join(f"\n  {label}" for label in differ))
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
