"""Settings of every service, read from `CC_`-prefixed environment variables.

Each service builds its own settings object in `main()` and passes it down; nothing reads the
environment at import time. Every default works on loopback, so a service starts with no
environment at all.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from callcenter.redis_topology import parse_redis_url
from callcenter.store.config import PARAMS

# query parameters of a URL that carry a secret (libpq's password/sslpassword, redis-py's password)
_SECRET_PARAM = re.compile(r"pass|secret|token|key", re.IGNORECASE)


def redact_url(url: str) -> str:
    """`url` fit to print: the password of its userinfo and any secret query parameter as `***`."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, host = netloc.rpartition("@")
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if netloc == parts.netloc and not any(_SECRET_PARAM.search(k) for k, _v in pairs):
            return url
        query = urlencode([(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # not a URL we can take apart: show none of it
        return "***"


class CommonSettings(BaseSettings):
    """Settings every service reads (`CC_*`): Redis, tenant, logging, health. The `*_url` fields
    may hold passwords: repr() and str() show them redacted (`redact_url`), so printing or logging
    settings never shows a secret."""

    model_config = SettingsConfigDict(env_prefix="CC_", extra="ignore")

    # the topology by scheme: redis:// (one server), redis+cluster://h:p,h:p (Redis Cluster),
    # redis+sentinel://h:p,h:p/service (Sentinel); callcenter.redis_topology
    redis_url: str = "redis://127.0.0.1:6379/0"
    tenant: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    log_level: str = "info"
    # health endpoint (GET /healthz, /readyz) of non-HTTP services; 0 disables it. Loopback unless
    # widened (a container whose probes come from outside sets 0.0.0.0)
    health_host: str = "127.0.0.1"
    health_port: int = 0
    # the SIP digest realm of registering agents: the api hashes their passwords for it (HA1), the
    # sip-edge challenges with it. Changing it needs every SIP password set again
    sip_realm: str = Field(default="callcenter", pattern=r'^[^"\\\x00-\x1f]{1,128}$')
    # WAIT after the writes that must survive a failover (the sip-edge's report batches, the
    # dispatcher's steps before their input is acknowledged): this many replicas, at most this long;
    # 0 replicas: no WAIT (callcenter.redis_durability, docs/operations.md)
    redis_wait_replicas: int = Field(default=0, ge=0, le=16)
    redis_wait_timeout_ms: int = Field(default=50, ge=1, le=10_000)

    @field_validator("redis_url")
    @classmethod
    def _known_topology(cls, value: str) -> str:
        parse_redis_url(value)   # an unknown scheme or a malformed node list fails at start
        return value

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name and name.endswith("_url") and isinstance(value, str) else value


class DispatchSettings(CommonSettings):
    """Call-handling parameters from the environment (`CC_WRAPUP_S`, ...): the ones set explicitly
    seed `cc:{tenant}:config` when it does not exist yet, at the start of the api or of a dispatcher
    (`callcenter.store.config_writes.seed_config`). After that PATCH /v1/config is the only writer,
    and a changed variable takes effect only on an empty config. Defaults and ranges are the
    registry's (`callcenter.store.config`): every field named like a parameter is checked against
    it, so the environment cannot seed a value PATCH /v1/config would refuse."""

    wrapup_s: int = 30
    ring_timeout_s: int = 20
    reject_on_no_agents: bool = True
    no_agents_code: int = 480
    queue_pos_param: str = "cc_pos"
    # extra seconds the dispatcher waits beyond the ring timeout before it treats an offer as lost
    # above the consumers' claim time (10 s), so a report held by a dead dispatcher comes in time
    offer_lease_grace_s: int = 15

    @field_validator(*(name for name in PARAMS if PARAMS[name].dispatcher_env), mode="after")
    @classmethod
    def _in_registry_range(cls, value: Any, info: Any) -> Any:
        PARAMS[info.field_name].check(value)
        return value


class DispatcherSettings(DispatchSettings):
    """The dispatcher's settings: its consumer name, batching, timers and the edge lapse."""

    consumer: str = Field(default_factory=lambda: f"dispatcher-{socket.gethostname()}")
    batch: int = Field(default=64, ge=1, le=1000)
    block_ms: int = Field(default=1000, ge=10)
    # after a read of fewer than `batch` reports, wait this long before the next: fewer, larger
    # batches (CPU per call) for up to this much more latency per decision (issue 15); 0: none
    read_linger_ms: int = Field(default=0, ge=0, le=100)
    claim_idle_ms: int = Field(default=10_000, ge=100)
    max_deliveries: int = Field(default=5, ge=1)
    # a report parked this long without its predecessor (an unknown call) is dead-lettered
    out_of_order_max_ms: int = Field(default=30_000, ge=100, le=3_600_000)
    # the timer loop sleeps until the first due timer, woken at once by a step that adds an earlier
    # one; with nothing due it looks again after this long (issue 15: not 10 polls a second)
    timer_interval_ms: int = Field(default=1000, ge=5)
    # how often the reconciler looks for agents that no live call holds
    reconcile_interval_ms: int = Field(default=5000, ge=100)
    # a sip-edge whose heartbeat is older than this is lost: its calls end (reason edge_lost)
    edge_lapse_ms: int = Field(default=5000, ge=500)
    # acknowledged reports are deleted from cc:{t}:reports once this old (kept to diagnose from)
    reports_keep_ms: int = Field(default=600_000, ge=0)
    # acknowledged events and commands stay this long too: the api's event feed resumes by id
    # without a group (callcenter.retention)
    events_keep_ms: int = Field(default=600_000, ge=0)
    # how often registrations whose last contact lapsed are looked for (their agents are paused)
    registration_lapse_interval_ms: int = Field(default=1000, ge=50)


class EdgeSettings(CommonSettings):
    """The sip-edge's settings: its id, SIP address, limits, heartbeat and drain."""

    edge_id: str = Field(default_factory=lambda: f"edge-{socket.gethostname()}", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # the address group: edges that share one SIP address (behind an SBC or a floating IP) and so
    # can carry on each other's dialogs; a live peer of the group adopts the calls of a lost edge.
    # "" = none (a lost edge's calls end, CDR edge_lost)
    edge_group: str = Field(default="", pattern=r"^[A-Za-z0-9_.-]{0,64}$")
    sip_host: str = "127.0.0.1"
    sip_port: int = 5060
    sip_advertised_host: str | None = None
    sip_max_message_bytes: int = 8192
    # INVITEs from sources outside these networks (comma-separated CIDRs) get 403
    sip_trusted_networks: str = "0.0.0.0/0,::/0"
    # per-source-IP token bucket for new INVITEs (0 = no limit); over it: 503 + Retry-After
    sip_invite_rate: float = Field(default=50.0, ge=0)
    sip_invite_burst: int = Field(default=100, ge=1)
    # one token bucket for the INVITEs of all sources together (0 = no limit); over it: 503 + Retry-After
    sip_invite_rate_total: float = Field(default=200.0, ge=0)
    sip_invite_burst_total: int = Field(default=400, ge=1)
    # sources whose caller priority (X-CC-Priority header, ;cc_priority= URI parameter) is taken
    # (comma-separated CIDRs; "" = none). Loopback by default: a local proxy may set it, no caller can
    sip_priority_networks: str = "127.0.0.0/8,::1"
    # SIP over TCP and TLS (off unless a port is set; 0 = any free port). TCP on the SIP port and TLS
    # on 5061 is the usual choice. TLS needs a certificate chain and key (PEM files)
    sip_tcp_port: int | None = Field(default=None, ge=0, le=65535)
    sip_tls_port: int | None = Field(default=None, ge=0, le=65535)
    sip_tls_certfile: str | None = None
    sip_tls_keyfile: str | None = None
    # CAs the TLS peers the edge connects to must be signed by (None: the system's); verify off only in labs
    sip_tls_cafile: str | None = None
    sip_tls_verify_peer: bool = True
    # limits of the TCP/TLS connections: a message over this is refused (the connection closed)
    sip_stream_max_message_bytes: int = Field(default=65535, ge=1024)
    sip_stream_max_connections_per_source: int = Field(default=32, ge=1)
    sip_stream_idle_timeout_s: float = Field(default=300.0, gt=0)
    # a message once started must be complete within this (slowloris), a TLS handshake within the next
    sip_stream_message_timeout_s: float = Field(default=10.0, gt=0)
    sip_tls_handshake_timeout_s: float = Field(default=5.0, gt=0)
    # with TCP on, a request over 1,300 bytes to a UDP target goes by TCP (RFC 3261 18.1.1); false
    # for UDP-only peers (media servers) that get large INVITEs
    sip_large_udp_by_tcp: bool = True
    # the registrar (REGISTER of agent AORs sip:<agent-id>@<domain>, docs/registering-agents.md).
    # Off: REGISTER gets 405 as before. Domains a REGISTER's To may name (comma-separated; "" = any)
    sip_registrar: bool = True
    sip_registrar_domains: str = ""
    sip_register_min_expires_s: int = Field(default=60, ge=1)
    sip_register_max_expires_s: int = Field(default=3600, ge=1)
    sip_register_default_expires_s: int = Field(default=600, ge=1)
    sip_register_max_contacts: int = Field(default=5, ge=1, le=100)
    sip_register_max_registrations: int = Field(default=10_000, ge=1)
    # the HMAC secret of digest nonces: give every edge the same one so a nonce of one is good at
    # another; unset, a random one per process (a nonce of another edge gets stale=true, then a retry)
    sip_register_nonce_secret: SecretStr | None = None
    sip_register_nonce_ttl_s: int = Field(default=300, ge=10)
    # the digest algorithms challenged, in order of preference (RFC 8760: one WWW-Authenticate each);
    # clients take the first they know. Put MD5 first for clients that read only the first challenge
    sip_register_algorithms: str = Field(default="SHA-256,MD5", pattern=r"^\s*(SHA-256|MD5)(\s*,\s*(SHA-256|MD5))*\s*$")
    # REGISTERs per source IP (token bucket: per second, burst) and failed authentications per source
    # IP and per AOR (per minute); over either: 503 + Retry-After (RFC 3261 21.5.4)
    sip_register_rate: float = Field(default=10.0, gt=0)
    sip_register_burst: int = Field(default=40, ge=1)
    sip_register_failures_per_minute: int = Field(default=10, ge=1)
    # SIP over WebSocket for browser agents (RFC 7118; off unless a port is set, 0 = any free port):
    # wss uses the TLS certificate and key above and is the only one for production; ws is plain
    # (labs, tests). The connections share the limits above; the Upgrade must be done within its
    # timeout. With origins set (comma-separated, e.g. "https://agents.example.com"), an Upgrade from
    # another page's Origin gets 403
    sip_ws_port: int | None = Field(default=None, ge=0, le=65535)
    sip_wss_port: int | None = Field(default=None, ge=0, le=65535)
    sip_ws_handshake_timeout_s: float = Field(default=5.0, gt=0)
    sip_ws_allowed_origins: str = ""
    # RFC 4028 session timers on the caller's and the agent's leg: the interval asked for (0 = off),
    # the smallest accepted (an INVITE asking less gets 422), and who refreshes the caller's leg when
    # the caller leaves it open (uas: the edge, which then notices a caller that vanished). Min-SE
    # under the RFC's 90 s only with sip_session_short_for_tests (tests of a few seconds)
    sip_session_expires_s: int = Field(default=1800, ge=0)
    sip_session_min_se_s: int = Field(default=90, ge=1)
    sip_session_refresher: str = Field(default="uas", pattern=r"^(uac|uas)$")
    sip_session_short_for_tests: bool = False
    # a call's end (report.call_ended) is appended and applied in one Lua step, in the transaction
    # that reports it, so its agent's next call is rung without waiting for a dispatcher; the
    # dispatchers still read it (DUPLICATE) and apply it when an earlier report of the call was not
    # applied yet. On one Redis server (or Sentinel) without CC_REDIS_WAIT_REPLICAS. Agent BYE ->
    # next INVITE p99 17-22 -> 6 ms, for 0.2-0.4 ms more CPU per call (smaller batches): so only
    # while the edge's process used less than apply_call_ends_max_cpu of one core over the last
    # second (0: whatever its load); busier, the dispatchers apply them (bench/README.md)
    apply_call_ends: bool = True
    apply_call_ends_max_cpu: float = Field(default=0.8, ge=0)
    heartbeat_interval_ms: int = Field(default=1000, ge=100)
    # the lease on the edge id lives this long unless a heartbeat renews it: set it to the
    # dispatchers' CC_EDGE_LAPSE_MS (a restart after a crash waits at most this long for the id)
    edge_lapse_ms: int = Field(default=5000, ge=500)
    drain_timeout_s: float = 30.0


class CdrWriterSettings(CommonSettings):
    """The cdr-writer's settings: the SQL database and its batching."""

    database_url: str = "sqlite:///callcenter.sqlite3"
    consumer: str = Field(default_factory=lambda: f"cdr-writer-{socket.gethostname()}")
    # about one event in four is a CDR row: 400 entries make transactions of about 100 rows, about
    # 4 times fewer than 100 entries would (the transactions are most of its cost, bench/cdr_writer.py)
    batch: int = Field(default=400, ge=1, le=1000)
    block_ms: int = Field(default=1000, ge=10)
    # after a read of fewer than `batch` entries, wait this long before the next one: a few large
    # batches instead of one small read, XACK and transaction per handful of events (issue 15);
    # a CDR reaches SQL up to this much later. 0: read again at once
    read_linger_ms: int = Field(default=100, ge=0, le=5000)
    claim_idle_ms: int = Field(default=30_000, ge=100)
    max_deliveries: int = Field(default=5, ge=1)


class MigrateSettings(CommonSettings):
    """`callcenter-migrate`'s settings: the SQL database whose schema it brings to the head revision."""

    database_url: str = "sqlite:///callcenter.sqlite3"


class ApiSettings(DispatchSettings):  # the call-handling variables seed the config (see above)
    """The api's settings: the SQL database and where it listens."""

    database_url: str = "sqlite:///callcenter.sqlite3"
    # loopback by default: exposing the api is a decision (compose sets 0.0.0.0 inside its network)
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    # the URL clients reach the api by when it is not api_host:api_port (a load balancer, an
    # ingress): webhooks to its host and port are refused like those to the api's own address
    api_public_url: str | None = Field(default=None, pattern=r"^https?://[^/?#]+")
    # a request body over this many bytes gets 413 before it is read whole
    api_max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=64 * 1024 * 1024)
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


class JobsSettings(CommonSettings):
    """The celery jobs' settings (services/jobs): broker, SQL, and what each job does how often.

    The broker and result backend are a Redis database of their own (db 1 by default) with a key
    prefix of their own, so celery's keys never mix with a tenant's `cc:{t}:*` keys."""

    database_url: str = "sqlite:///callcenter.sqlite3"
    jobs_broker_url: str = "redis://127.0.0.1:6379/1"
    jobs_result_url: str = "redis://127.0.0.1:6379/1"
    jobs_key_prefix: str = "ccjobs:"
    # how often beat runs the event pump (events group `webhooks` -> deliveries) and the export queue
    jobs_pump_interval_s: float = Field(default=1.0, gt=0, le=60)
    # deliveries: attempts in all, the first back-off (doubled each time, with jitter) and the timeout
    webhook_max_attempts: int = Field(default=6, ge=1, le=30)
    webhook_backoff_s: float = Field(default=5.0, gt=0, le=3600)
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # a delivery `queued` and untouched this long lost its task (a worker SIGKILLed with it reserved:
    # the Redis broker gives it back only after its visibility timeout, an hour): the pump queues it
    # again. Longer than any back-off wait (webhook_backoff_s x 2^(attempts-2)) plus a POST
    webhook_requeue_s: float = Field(default=600.0, gt=0, le=86_400)
    # interval reports: recomputed every this many seconds (the current and the previous interval)
    reports_interval_s: float = Field(default=60.0, gt=0, le=3600)
    report_sl_threshold_s: int = Field(default=20, ge=1, le=86_400)
    # retention of SQL rows: CDRs, interval reports, exports and finished deliveries older than this
    purge_interval_s: float = Field(default=3600.0, gt=0)
    cdr_keep_days: int = Field(default=400, ge=1)
    reports_keep_days: int = Field(default=800, ge=1)
    exports_keep_days: int = Field(default=7, ge=1)
