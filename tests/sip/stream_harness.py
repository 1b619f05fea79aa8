"""SIPp over TCP (`-t t1`) and TLS (`-t l1`) against the edge, and a throw-away CA for TLS.

Reads: the SIPp scenarios in tests/sipp/. Writes: under the test's directory, the CA and the
certificate (openssl CLI) and a copy of each scenario whose Contact headers carry
`;transport=[transport]` (a UA reached over TCP or TLS says so in its Contact, RFC 3261 19.1.1;
the UDP scenarios leave it out), SIPp's traces.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from sip_harness import LOOPBACK, SCENARIOS, SIPP_HARD_LIMIT_S, SIPP_TIMEOUT_S, SippLauncher, SippProcess, free_udp_port

SIPP_TRANSPORT = {"tcp": "t1", "tls": "l1"}
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


@dataclass
class StreamSipp(SippProcess):
    transport: str = "tcp"

    def uri(self, user: str, params: str = "") -> str:
        return f"sip:{user}@{LOOPBACK}:{self.port};transport={self.transport}{params}"


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
    port = free_udp_port()   # its TCP twin is free too as a rule; SIPp fails at once otherwise
    workdir = launcher.tmp_path / f"sipp-{name}"
    workdir.mkdir(parents=True, exist_ok=True)
    text = (SCENARIOS / f"{scenario}.xml").read_text()
    if sdp_padding:
        padding = "".join(f"      a=x-padding-{i}:{'p' * 40}\n" for i in range(sdp_padding // 60 + 1))
        text = text.replace("      a=sendrecv\n", "      a=sendrecv\n" + padding, 1)
    scenario_file = workdir / f"{scenario}.xml"
    scenario_file.write_text(_CONTACT.sub(r"\1;transport=[transport]>", text))
    cmd = ["timeout", "-k", "5", str(SIPP_HARD_LIMIT_S), "sipp", "-sf", str(scenario_file), "-t",
           SIPP_TRANSPORT[transport], "-i", LOOPBACK, "-p", str(port), "-m", "1", "-timeout", f"{SIPP_TIMEOUT_S}s",
           "-timeout_error", "-nostdin", "-trace_err", "-trace_msg", "-recv_timeout", "15000"]
    if certs is not None and transport == "tls":
        cmd += ["-tls_cert", str(certs.cert), "-tls_key", str(certs.key)]
    if service is not None:
        cmd += ["-s", service]
    if pause_ms is not None:
        cmd += ["-d", str(pause_ms)]
    if remote_port is not None:
        cmd.append(f"{LOOPBACK}:{remote_port}")
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sipp = StreamSipp(name=name, port=port, workdir=workdir, proc=proc, transport=transport)
    launcher.started.append(sipp)
    if remote_port is None:
        deadline = time.monotonic() + 5
        while not tcp_listening(port) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
    return sipp
