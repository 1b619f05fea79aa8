"""Settings of every service, read from `CC_`-prefixed environment variables.

Each service builds its own settings object in `main()` and passes it down; nothing reads the
environment at import time. Every default works on loopback, so a service starts with no
environment at all.
"""

from __future__ import annotations

import socket

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CC_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    tenant: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    log_level: str = "info"
    # health endpoint (GET /healthz, /readyz) of non-HTTP services; 0 disables it
    health_port: int = 0


class DispatchSettings(CommonSettings):
    """Call-handling parameters from the environment (`CC_WRAPUP_S`, ...): the ones set explicitly
    seed `cc:{tenant}:config` when it does not exist yet, at the start of the api or of a dispatcher
    (`callcenter.store.config_writes.seed_config`). After that PATCH /v1/config is the only writer,
    and a changed variable takes effect only on an empty config. Defaults and ranges are the
    registry's (`callcenter.store.config`)."""

    wrapup_s: int = Field(default=30, ge=0)
    ring_timeout_s: int = Field(default=20, ge=1)
    reject_on_no_agents: bool = True
    no_agents_code: int = Field(default=480, ge=400, le=699)
    queue_pos_param: str = Field(default="cc_pos", pattern=r"^[A-Za-z0-9_.-]{0,32}$")
    # extra seconds the dispatcher waits beyond the ring timeout before it treats an offer as lost
    # above the consumers' claim time (10 s), so a report held by a dead dispatcher comes in time
    offer_lease_grace_s: int = Field(default=15, ge=1)


class DispatcherSettings(DispatchSettings):
    consumer: str = Field(default_factory=lambda: f"dispatcher-{socket.gethostname()}")
    batch: int = Field(default=64, ge=1, le=1000)
    block_ms: int = Field(default=1000, ge=10)
    claim_idle_ms: int = Field(default=10_000, ge=100)
    max_deliveries: int = Field(default=5, ge=1)
    timer_interval_ms: int = Field(default=100, ge=5)
    # how often the reconciler looks for agents that no live call holds
    reconcile_interval_ms: int = Field(default=5000, ge=100)
    # a sip-edge whose heartbeat is older than this is lost: its calls end (reason edge_lost)
    edge_lapse_ms: int = Field(default=5000, ge=500)


class EdgeSettings(CommonSettings):
    edge_id: str = Field(default_factory=lambda: f"edge-{socket.gethostname()}", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    sip_host: str = "127.0.0.1"
    sip_port: int = 5060
    sip_advertised_host: str | None = None
    sip_max_message_bytes: int = 8192
    # INVITEs from sources outside these networks (comma-separated CIDRs) get 403
    sip_trusted_networks: str = "0.0.0.0/0,::/0"
    # per-source-IP token bucket for new INVITEs (0 = no limit); over it: 503 + Retry-After
    sip_invite_rate: float = Field(default=50.0, ge=0)
    sip_invite_burst: int = Field(default=100, ge=1)
    heartbeat_interval_ms: int = Field(default=1000, ge=100)
    drain_timeout_s: float = 30.0


class CdrWriterSettings(CommonSettings):
    database_url: str = "sqlite:///callcenter.sqlite3"
    consumer: str = Field(default_factory=lambda: f"cdr-writer-{socket.gethostname()}")
    batch: int = Field(default=100, ge=1, le=1000)
    block_ms: int = Field(default=1000, ge=10)
    claim_idle_ms: int = Field(default=30_000, ge=100)
    max_deliveries: int = Field(default=5, ge=1)


class ApiSettings(DispatchSettings):  # the call-handling variables seed the config (see above)
    database_url: str = "sqlite:///callcenter.sqlite3"
    # loopback by default: exposing the api is a decision (compose sets 0.0.0.0 inside its network)
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    # every endpoint but /healthz and /readyz needs an API key or token; `off` (local demos only)
    # lets every request through as an admin and says so in the log at start-up
    api_auth: str = Field(default="on", pattern="^(on|off)$")
    # the HS256 secret that signs browser tokens (POST /v1/tokens); unset: a random one per process,
    # so tokens then work only against the replica that minted them. Set it when running replicas.
    api_token_secret: SecretStr | None = None
    api_token_max_ttl_s: int = Field(default=3600, ge=60, le=86_400)
    # browser origins allowed by CORS, comma-separated; empty: no CORS headers at all
    api_cors_origins: str = ""
    # the event feed (GET /v1/events): a comment line after this many idle seconds, and the number
    # of events a subscriber may have undelivered before it is dropped as too slow
    api_sse_heartbeat_s: float = Field(default=15.0, gt=0, le=300)
    api_sse_buffer: int = Field(default=1000, ge=10, le=100_000)
