"""The session-timer settings of an edge (RFC 4028), without sippy, so the service can build them.

Reads: the edge's settings (`callcenter.settings.EdgeSettings`, CC_SIP_SESSION_*). Writes: nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# RFC 4028 4: Min-SE may not be set below 90 s (the absolute minimum)
RFC_MIN_SE_S = 90


@dataclass(frozen=True)
class SessionTimerOptions:
    """`expires_s`: the session interval the edge asks for (0: no session timers); `min_se_s`: the
    smallest interval it accepts (an INVITE asking less gets 422 with this Min-SE); `refresher`:
    who refreshes the caller's leg when the caller leaves it open (`uas`: the edge, which then also
    notices a caller that vanished; `uac`: the caller). `short_for_tests` allows `min_se_s` under
    the RFC's 90 s, so tests can run intervals of a few seconds."""

    expires_s: int = 1800
    min_se_s: int = RFC_MIN_SE_S
    refresher: str = "uas"
    short_for_tests: bool = False

    def __post_init__(self) -> None:
        if self.refresher not in ("uac", "uas"):
            raise ValueError(f"session refresher must be uac or uas, not {self.refresher!r}")
        if self.min_se_s < 1 or (self.min_se_s < RFC_MIN_SE_S and not self.short_for_tests):
            raise ValueError(f"session Min-SE {self.min_se_s} s is below RFC 4028's {RFC_MIN_SE_S} s "
                             "(allowed only with the test setting sip_session_short_for_tests)")
        if self.expires_s and self.expires_s < self.min_se_s:
            raise ValueError(f"session interval {self.expires_s} s is below its Min-SE {self.min_se_s} s")

    @property
    def enabled(self) -> bool:
        return self.expires_s > 0

    @classmethod
    def from_settings(cls, settings: Any) -> SessionTimerOptions:
        s = settings
        return cls(expires_s=s.sip_session_expires_s, min_se_s=s.sip_session_min_se_s,
                   refresher=s.sip_session_refresher, short_for_tests=s.sip_session_short_for_tests)
