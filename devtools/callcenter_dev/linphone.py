"""linphone-cli (Debian `linphonec`) as a headless test phone: its configuration and how to start it.

No sound card here: linphonec is told `soundcard use files` on its stdin before anything rings (it
then plays and records WAV files instead of opening ALSA); its database and logs go under a private
HOME so nothing of the user's is read or written. Dev-only.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

CONFIG = """\
[sip]
sip_port={port}
sip_tcp_port={tcp_port}
sip_tls_port=-1
default_proxy=0
register_only_when_network_is_up=0
[net]
mtu=1300
[rtp]
audio_rtp_port={rtp_port}
[proxy_0]
reg_proxy=<sip:{edge_host}:{edge_port};transport={transport}>
reg_identity=sip:{user}@{domain}
reg_expires=60
reg_sendregister=1
publish=0
[auth_info_0]
username={user}
passwd={password}
realm={realm}
domain={domain}
[video]
capture=0
display=0
"""


def config(*, port: int, user: str, domain: str, password: str, realm: str, edge_host: str,
           edge_port: int, transport: str, rtp_port: int) -> str:
    """The linphonerc of a phone listening on `port` (UDP, and TCP on the same port when it
    registers over TCP) that registers `user@domain` through the edge with `password`."""
    return CONFIG.format(port=port, tcp_port=port if transport == "tcp" else -1, user=user,
                         domain=domain, password=password, realm=realm, edge_host=edge_host,
                         edge_port=edge_port, transport=transport, rtp_port=rtp_port)


CALLER_CONFIG = """\
[sip]
sip_port={port}
sip_tcp_port=-1
sip_tls_port=-1
[rtp]
audio_rtp_port={rtp_port}
[video]
capture=0
display=0
"""


def caller_config(*, port: int, rtp_port: int) -> str:
    """The linphonerc of a phone on UDP `port` that registers nowhere: it only calls (its Contact
    then has no user part, `sip:<ip>:<port>`)."""
    return CALLER_CONFIG.format(port=port, rtp_port=rtp_port)


def start(home: Path, rc: Path, log: Path, *, lifetime_s: int = 60) -> subprocess.Popen[bytes]:
    """linphonec with auto-answer, its stdin a pipe (the caller writes `soundcard use files` and
    later `quit`), everything it prints into `log`; killed by `timeout` after `lifetime_s`."""
    (home / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        ["timeout", "-k", "5", str(lifetime_s), "linphonec", "-c", str(rc), "-a", "-d", "6", "-l", str(log)],
        cwd=home, env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, stdin=subprocess.PIPE,
        stdout=log.with_suffix(".out").open("wb"), stderr=subprocess.STDOUT)
