"""SIPp over TCP (`-t t1`) and TLS against the edge, and a throw-away CA for TLS.

Reads: the SIPp scenarios in tests/sipp/. Writes: under the test's directory, the CA and the
certificate (openssl CLI) and a copy of each scenario whose Contact headers carry
`;transport=[transport]` (a UA reached over TCP or TLS says so in its Contact, RFC 3261 19.1.1;
the UDP scenarios leave it out), SIPp's traces.

TLS: Debian's SIPp 3.6.1 is built without OpenSSL (`-t l1` and `-tls_cert` refuse: "OpenSSL is
required"). So a TLS peer here is SIPp over TCP behind a `TlsRelay` of its own: the relay ends
the edge's TLS connections and opens TLS ones to the edge for SIPp's, and the scenario copy
names the relay's TLS port in its Via, Contact and From (`;transport=tls`), so every message the
edge sends that peer, in and out of dialog, travels over TLS.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sip_harness import (
    LOOPBACK,
    SCENARIOS,
    EdgeUnderTest,
    ScriptedDispatcher,
    SippLauncher,
    SippProcess,
    free_udp_port,
    sipp_command,
)

from callcenter_sip_edge.sip_stack import SipStack
from callcenter_sip_edge.sippy.streams import StreamOptions

_CONTACT = re.compile(r"^(\s*Contact:\s*<sip:[^>]*)>", re.MULTILINE)


@dataclass(frozen=True)
class Certificates:
    ca: Path      # the CA the edge checks its TLS peers against
    cert: Path    # 127.0.0.1's certificate (IP SAN), signed by the CA: the edge's and SIPp's
    key: Path


def make_certificates(directory: Path) -> Certificates:
    """A throw-away CA and a certificate for 127.0.0.1 signed by it (openssl CLI)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr = directory / "cert.pem", directory / "key.pem", directory / "cert.csr"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
            "-days", "2", "-subj", "/CN=callcenter test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return Certificates(ca=ca, cert=cert, key=key)


class TlsRelay:
    """TLS in front of one SIPp over TCP, on an asyncio loop in its own thread: TLS connections to
    `tls_port` are piped to SIPp's TCP port; TCP connections from SIPp to `plain_port` are piped
    to the edge's TLS port (the edge's certificate checked against the CA)."""

    def __init__(self, certs: Certificates, sipp_port: int, edge_tls_port: int | None) -> None:
        self.sipp_port, self.edge_tls_port = sipp_port, edge_tls_port
        self.server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_tls.load_cert_chain(certs.cert, certs.key)
        self.client_tls = ssl.create_default_context(cafile=str(certs.ca))
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tls-relay", daemon=True)
        self._thread.start()
        self.tls_port = asyncio.run_coroutine_threadsafe(
            self._listen(self._from_edge, self.server_tls), self.loop).result(5)
        self.plain_port = asyncio.run_coroutine_threadsafe(self._listen(self._from_sipp, None), self.loop).result(5)

    async def _listen(self, handler: object, tls: ssl.SSLContext | None) -> int:
        server = await asyncio.start_server(handler, LOOPBACK, 0, ssl=tls)  # type: ignore[arg-type]
        return int(server.sockets[0].getsockname()[1])

    async def _from_edge(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._pipe_to(reader, writer, self.sipp_port, None)

    async def _from_sipp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._pipe_to(reader, writer, self.edge_tls_port, self.client_tls)

    @staticmethod
    async def _pipe_to(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int | None,
                       tls: ssl.SSLContext | None) -> None:
        if port is None:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(LOOPBACK, port, ssl=tls)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def close(self) -> None:
        async def cancel_pipes() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(cancel_pipes(), self.loop).result(5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(2.0)


@dataclass
class StreamSipp(SippProcess):
    transport: str = "tcp"
    relay: TlsRelay | None = field(default=None, repr=False)

    @property
    def sip_port(self) -> int:
        """Where the edge reaches this peer: SIPp's own port, or its relay's TLS port."""
        return self.relay.tls_port if self.relay is not None else self.port

    def uri(self, user: str, params: str = "") -> str:
        return f"sip:{user}@{LOOPBACK}:{self.sip_port};transport={self.transport}{params}"

    def stop(self) -> None:
        super().stop()
        if self.relay is not None:
            self.relay.close()


def stream_options(certs: Certificates | None, **limits: float) -> StreamOptions:
    """TCP on a free port; with `certs`, TLS too (the certificate for 127.0.0.1, peers checked
    against the CA)."""
    if certs is None:
        return StreamOptions(tcp_port=0, **limits)  # type: ignore[arg-type]
    return StreamOptions(tcp_port=0, tls_port=0, tls_certfile=str(certs.cert), tls_keyfile=str(certs.key),
                         tls_cafile=str(certs.ca), **limits)  # type: ignore[arg-type]


@asynccontextmanager
async def running_edge(options: StreamOptions) -> AsyncIterator[EdgeUnderTest]:
    """A SipStack on a free loopback port with `options`' transports (`stack.stream_ports` says
    where), its facts to a ScriptedDispatcher; stopped at the end."""
    dispatcher = ScriptedDispatcher()
    stack = SipStack(host=LOOPBACK, port=0, on_fact=dispatcher.on_fact, loop=asyncio.get_running_loop(),
                     streams=options)
    stack.start()
    assert stack.bound_address is not None
    try:
        yield EdgeUnderTest(stack=stack, dispatcher=dispatcher, port=stack.bound_address[1])
    finally:
        stack.stop()


def stream_scenario(scenario: str, relay: TlsRelay | None, sdp_padding: int = 0) -> str:
    """tests/sipp/<scenario>.xml for a peer over TCP (Contact with `;transport=[transport]`), or over
    TLS behind `relay` (its TLS port in place of SIPp's, `;transport=tls`); with `sdp_padding` bytes
    of extra SDP attributes after `a=sendrecv`."""
    text = (SCENARIOS / f"{scenario}.xml").read_text()
    if sdp_padding:
        padding = "".join(f"      a=x-padding-{i}:{'p' * 40}\n" for i in range(sdp_padding // 60 + 1))
        text = text.replace("      a=sendrecv\n", "      a=sendrecv\n" + padding, 1)
    if relay is None:
        return _CONTACT.sub(r"\1;transport=[transport]>", text)
    return _CONTACT.sub(r"\1;transport=tls>", text.replace("[local_port]", str(relay.tls_port)))


def free_stream_port() -> int:
    """A port free for UDP and TCP on 127.0.0.1 now (SIPp over TCP binds both)."""
    for _ in range(50):
        port = free_udp_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def connect(port: int, certs: Certificates | None = None, *, timeout_s: float = 5.0) -> socket.socket:
    """A blocking connection to the edge's stream port on loopback; over TLS (the CA checked) with
    `certs`. Reads on it time out after `timeout_s`."""
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout_s)
    if certs is None:
        return sock
    return ssl.create_default_context(cafile=str(certs.ca)).wrap_socket(sock, server_hostname=LOOPBACK)


def read_until_closed(sock: socket.socket) -> tuple[bool, bytes]:
    """Read until the edge closes the connection: (closed before a read timed out, what came). The
    socket is closed on return."""
    got = b""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True, got
            got += data
    except TimeoutError:
        return False, got
    except (ConnectionResetError, ssl.SSLError, OSError):
        return True, got
    finally:
        sock.close()


def tcp_listening(port: int) -> bool:
    """Whether a socket listens on this local TCP port (read from /proc: no probing connection)."""
    needle = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        if any(len(f := line.split()) > 3 and f[1].endswith(needle) and f[3] == "0A" for line in lines):
            return True
    return False


def start_stream_sipp(launcher: SippLauncher, scenario: str, transport: str, certs: Certificates | None, *,
                      name: str | None = None, remote_port: int | None = None, service: str | None = None,
                      pause_ms: int | None = None, sdp_padding: int = 0) -> StreamSipp:
    """SIPp with tests/sipp/<scenario>.xml over `transport` (tcp or tls) for one call; as a UAS it
    listens on a free port (returned once it does). `sdp_padding`: that many bytes of extra SDP
    attributes after `a=sendrecv` (a large offer)."""
    name = name or scenario
    port = free_stream_port()
    workdir = launcher.tmp_path / f"sipp-{name}"
    workdir.mkdir(parents=True, exist_ok=True)
    relay = TlsRelay(certs, port, remote_port) if transport == "tls" and certs is not None else None
    if relay is not None and remote_port is not None:
        remote_port = relay.plain_port
    text = stream_scenario(scenario, relay, sdp_padding)
    scenario_file = workdir / f"{scenario}.xml"
    scenario_file.write_text(text)
    cmd = sipp_command(["-sf", str(scenario_file), "-t", "t1"], port, service=service, pause_ms=pause_ms,
                       remote_port=remote_port)
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sipp = StreamSipp(name=name, port=port, workdir=workdir, proc=proc, transport=transport, relay=relay)
    launcher.started.append(sipp)
    if remote_port is None:
        deadline = time.monotonic() + 5
        while not tcp_listening(port) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
    return sipp
