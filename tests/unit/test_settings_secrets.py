"""Secrets in settings are never shown: a password in a database or Redis URL (in the userinfo or as
a query parameter) is redacted wherever settings or URLs are printed (issue 10 item 10)."""

from __future__ import annotations

import pytest

from callcenter.settings import ApiSettings, CdrWriterSettings, CommonSettings, EdgeSettings, redact_url


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql+psycopg://cc:s3cret@db:5432/cc", "postgresql+psycopg://cc:***@db:5432/cc"),
    ("postgresql://db/cc?user=cc&password=s3cret&sslmode=require",
     "postgresql://db/cc?user=cc&password=***&sslmode=require"),
    ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
    ("rediss://default:s3cret@redis:6380/0?ssl_cert_reqs=none", "rediss://default:***@redis:6380/0?ssl_cert_reqs=none"),
    ("redis://redis:6379/0?password=s3cret", "redis://redis:6379/0?password=***"),
    ("sqlite:///callcenter.sqlite3", "sqlite:///callcenter.sqlite3"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_settings_never_show_a_password() -> None:
    for settings in (ApiSettings(database_url="postgresql://cc:s3cret@db/cc?sslpassword=s3cret",
                                 redis_url="redis://:s3cret@r:6379/0"),
                     CdrWriterSettings(database_url="postgresql://db/cc?password=s3cret"),
                     EdgeSettings(redis_url="redis://u:s3cret@r/0")):
        assert "s3cret" not in repr(settings) and "s3cret" not in str(settings)
        assert "***" in repr(settings)
    # the value itself is what the service connects with
    assert ApiSettings(redis_url="redis://:s3cret@r:6379/0").redis_url == "redis://:s3cret@r:6379/0"


def test_health_binds_loopback_unless_widened() -> None:
    assert CommonSettings().health_host == "127.0.0.1"
    assert CommonSettings(health_host="0.0.0.0").health_host == "0.0.0.0"
