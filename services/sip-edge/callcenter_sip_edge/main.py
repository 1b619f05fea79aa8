"""`callcenter-sip-edge`: the SIP B2BUA of callcenter. Drains on SIGTERM.

Takes INVITEs on `CC_SIP_HOST:CC_SIP_PORT`, reports each call's facts to `cc:{t}:reports` and
carries out the commands of `cc:{t}:commands:<edge_id>`. On SIGTERM new INVITEs get 503 and the
calls in progress may finish until `CC_DRAIN_TIMEOUT_S`. Settings: `CC_*` environment variables.
Optional health endpoint on `CC_HEALTH_PORT`. Refuses to start (exit code 75, log line
`edge.start_refused`) when another process holds its UDP port or a live edge holds its id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from callcenter.lifecycle import run_service, start_from_command_line
from callcenter.redis import connect
from callcenter.settings import EdgeSettings
from callcenter.stream_read import quick_sends
from callcenter_sip_edge.ownership import EXIT_START_REFUSED, StartRefused
from callcenter_sip_edge.service import EdgeService

log = structlog.get_logger(__name__)

# beyond the calls' drain: waiting for the last commands (5 s), the last reports, the SIP stack's stop
DRAIN_MARGIN_S = 10.0


async def run(settings: EdgeSettings, stop: asyncio.Event | None = None) -> None:
    redis = connect(settings.redis_url)
    quick_sends(redis)  # its small sends (report batches, command reads) without a timer task each (issue 15)
    service = EdgeService(settings, redis)

    async def ready() -> bool:
        return bool(await redis.ping())

    # the service drains its calls itself (503 to new INVITEs, hang-up at CC_DRAIN_TIMEOUT_S)
    await run_service("sip-edge", redis=redis, health_port=settings.health_port,
                      health_host=settings.health_host, ready=ready, stop=stop,
                      work=service.run, on_stop=service.request_stop,
                      drain_s=settings.drain_timeout_s + DRAIN_MARGIN_S)


def main(argv: Sequence[str] | None = None) -> None:
    try:
        start_from_command_line("callcenter-sip-edge", __doc__ or "", EdgeSettings, run, argv)
    except StartRefused as exc:
        # not a crash: another process owns what this one needs; say which, exit with a code of its own
        log.error("edge.start_refused", reason=str(exc), exit_code=EXIT_START_REFUSED)
        raise SystemExit(EXIT_START_REFUSED) from None


if __name__ == "__main__":
    main()
