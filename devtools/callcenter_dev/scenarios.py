"""SIPp scenarios shipped with callcenter, for the demo, the end-to-end tests and the benchmarks.

caller.xml          a caller: INVITE with an offer, follows every re-INVITE the edge sends
(welcome -> queue -> agent), talks for -d ms once an agent's SDP arrives
(it carries `s=callcenter-agent`), then hangs up with BYE
media_welcome.xml   a media server playing a message: answers, hangs up after -d ms
media_queue.xml     a media server playing queue music: answers and waits for the BYE
media_queue_hangs_up.xml  queue music that hangs up its leg after 3 s unless the edge BYEs first
caller_expect_503.xml     a caller turned away with 503: logs the reason phrase and Retry-After
agent.xml           an agent's phone: rings 1 s, answers with `s=callcenter-agent`, waits for BYE
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def scenario(name: str) -> Path:
    path = Path(str(resources.files("callcenter_dev").joinpath("sipp_scenarios", name)))
    if not path.exists():
        raise FileNotFoundError(f"no SIPp scenario {name!r} in {path.parent}")
    return path
