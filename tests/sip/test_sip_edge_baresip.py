"""A real softphone against the edge: `baresip` (Debian) as an agent at a fixed address that
answers by itself, over UDP and over TCP, and as a caller into a flow (UDP and TCP).

baresip runs headless with this configuration (each line a finding):
- no audio device: `aubridge` as its source and player. `ausine` as the source fails an 8 kHz call
  ("ausine: supports only 48kHz samplerate") and the phone answers nothing;
- `net_interface 127.0.0.1`: without it baresip puts the host's first interface in its Contact and
  SDP; `net_interface lo` fails in 1.0.0 ("could not get IPv4 address");
- no registration (`regint=0`), auto-answer (`answermode=auto`), SIP trace on (-s) so the test can
  see what it got; `-t` quits (hanging up with BYE) after that many seconds.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from sip_harness import LOOPBACK, EdgeUnderTest, SippLauncher, expect_success
from stream_harness import free_stream_port, running_edge, start_stream_sipp, stream_options, tcp_listening

from callcenter_dev import baresip
from callcenter_dev.servers import stop_process

pytestmark = pytest.mark.skipif(shutil.which("baresip") is None,
                                reason="baresip is not installed (apt-get install baresip)")

BARESIP_CONFIG = baresip.CONFIG


class Baresip:
    """One headless baresip process with its own configuration directory."""

    def __init__(self, workdir: Path, account: str, *commands: str, quit_after_s: int = 30) -> None:
        self.port = free_stream_port()
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config").write_text(BARESIP_CONFIG.format(host=LOOPBACK, port=self.port))
        (workdir / "accounts").write_text(account + "\n")
        cmd = ["timeout", "-k", "5", str(quit_after_s + 10), "baresip", "-f", str(workdir), "-s",
               "-t", str(quit_after_s)]
        for command in commands:
            cmd += ["-e", command]
        self.log = workdir / "baresip.log"
        self.proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT)

    def wait_listening(self) -> None:
        for _ in range(250):
            if tcp_listening(self.port) or self.proc.poll() is not None:
                return
            subprocess.run(["sleep", "0.02"], check=False)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def baresips(tmp_path: Path) -> Iterator[list[Baresip]]:
    started: list[Baresip] = []
    yield started
    for phone in started:
        phone.stop()


@pytest_asyncio.fixture
async def edge() -> AsyncIterator[EdgeUnderTest]:
    async with running_edge(stream_options(None)) as edge:
        yield edge


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_baresip_agent_answers_and_gets_the_bye(edge: EdgeUnderTest, sipp: SippLauncher, tmp_path: Path,
                                                      baresips: list[Baresip], transport: str) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    phone = Baresip(tmp_path / "agent", f"<sip:agent@{LOOPBACK}>;regint=0;answermode=auto")
    baresips.append(phone)
    await asyncio.to_thread(phone.wait_listening)
    uri = f"sip:agent@{LOOPBACK}:{phone.port}" + (";transport=tcp" if transport == "tcp" else "")
    dispatcher.on("call_arrived", lambda f: stack.ring(f.call_id, "o1", "a1", uri, 10.0))
    caller = sipp.start("caller_answered_bye", name="caller", remote_port=edge.port, service="support",
                        pause_ms=1500)

    await expect_success(caller)
    await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "agent_answered", "call_ended"], phone.output()[-3000:]
    assert stack.active_calls() == 0
    for _ in range(100):   # the phone got the edge's BYE (relayed from the caller) and answered it
        if "BYE sip:" in phone.output():
            break
        await asyncio.sleep(0.05)
    trace = phone.output()
    assert "BYE sip:" in trace, trace[-3000:]
    assert f"SIP/2.0/{transport.upper()} " in trace.split("BYE sip:", 1)[1].split("\n\n", 1)[0]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_baresip_caller_reaches_an_agent(edge: EdgeUnderTest, sipp: SippLauncher, tmp_path: Path,
                                               baresips: list[Baresip], transport: str) -> None:
    stack, dispatcher = edge.stack, edge.dispatcher
    agent = start_stream_sipp(sipp, "agent_early_uas", "tcp", None, name="agent") if transport == "tcp" \
        else sipp.start("agent_early_uas", name="agent")
    dispatcher.on("call_arrived", lambda f: stack.ring(f.call_id, "o1", "a1", agent.uri("agent"), 10.0))
    port = edge.port if transport == "udp" else stack.stream_ports["tcp"]
    target = f"sip:support@{LOOPBACK}:{port}" + (";transport=tcp" if transport == "tcp" else "")
    phone = Baresip(tmp_path / "caller", f"<sip:ann@{LOOPBACK}>;regint=0", f"/dial {target}", quit_after_s=4)
    baresips.append(phone)

    await expect_success(agent)   # the agent answered and got the BYE when baresip hung up (it quit)
    ended = await dispatcher.wait_for("call_ended")
    assert dispatcher.kinds() == ["call_arrived", "agent_answered", "call_ended"], phone.output()[-3000:]
    assert dispatcher.facts[0].data["flow"] == "support"
    assert dispatcher.facts[0].data["caller"] == "ann"
    assert ended.data["by"] == "caller"
