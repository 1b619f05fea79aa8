"""baresip (Debian) as a headless test phone: the configuration every test gives it.

No audio device: `aubridge` as source and player (`ausine` fails an 8 kHz call); `net_interface`
set to the loopback address (without it baresip puts the host's first interface in its Contact and
SDP). Dev-only.
"""

from __future__ import annotations

CONFIG = """\
sip_listen {host}:{port}
sip_transports udp,tcp
net_interface {host}
audio_player aubridge,nil
audio_source aubridge,nil
audio_alert aubridge,nil
module_path /usr/lib/baresip/modules
module g711.so
module aubridge.so
module_app account.so
module_app menu.so
"""


def config(host: str, port: int) -> str:
    """The `config` file of a baresip listening on host:port (UDP and TCP)."""
    return CONFIG.format(host=host, port=port)
