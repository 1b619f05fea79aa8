"""The sip-edge's session-timer settings (RFC 4028): defaults, the RFC's 90 s Min-SE floor and the
test-only way under it, and the reading of CC_SIP_SESSION_* into `SessionTimerOptions`."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from callcenter.settings import EdgeSettings
from callcenter_sip_edge.session_options import RFC_MIN_SE_S, SessionTimerOptions


def test_defaults_follow_the_rfc() -> None:
    options = SessionTimerOptions.from_settings(EdgeSettings())
    assert (options.expires_s, options.min_se_s, options.refresher) == (1800, RFC_MIN_SE_S, "uas")
    assert options.enabled and not options.short_for_tests


def test_min_se_under_90_s_needs_the_test_setting() -> None:
    with pytest.raises(ValueError, match="below RFC 4028's 90 s"):
        SessionTimerOptions(expires_s=4, min_se_s=2)
    options = SessionTimerOptions(expires_s=4, min_se_s=2, short_for_tests=True)
    assert (options.expires_s, options.min_se_s) == (4, 2)


@pytest.mark.parametrize(("fields", "message"), [
    ({"expires_s": 60, "min_se_s": 90}, "below its Min-SE"),
    ({"refresher": "both"}, "uac or uas"),
    ({"min_se_s": 0, "short_for_tests": True}, "below RFC 4028"),
])
def test_incoherent_options_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SessionTimerOptions(**fields)  # type: ignore[arg-type]


def test_zero_interval_turns_timers_off() -> None:
    assert not SessionTimerOptions(expires_s=0).enabled


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC_SIP_SESSION_EXPIRES_S", "6")
    monkeypatch.setenv("CC_SIP_SESSION_MIN_SE_S", "3")
    monkeypatch.setenv("CC_SIP_SESSION_REFRESHER", "uac")
    monkeypatch.setenv("CC_SIP_SESSION_SHORT_FOR_TESTS", "true")
    options = SessionTimerOptions.from_settings(EdgeSettings())
    assert (options.expires_s, options.min_se_s, options.refresher, options.short_for_tests) == (6, 3, "uac", True)
    monkeypatch.setenv("CC_SIP_SESSION_REFRESHER", "proxy")
    with pytest.raises(ValidationError):
        EdgeSettings()
