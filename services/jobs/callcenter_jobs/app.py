"""The celery app (`celery -A callcenter_jobs.app worker|beat`): Redis broker and result backend in
a database and under a key prefix of their own (`CC_JOBS_BROKER_URL`, `CC_JOBS_RESULT_URL`,
`CC_JOBS_KEY_PREFIX`), and beat's schedule. Celery needs the app at module level, so the
settings are read here, once, when the worker or beat imports it.
"""

from __future__ import annotations

import sys

from celery import Celery

from callcenter.lifecycle import settings_help
from callcenter.settings import JobsSettings

_settings = JobsSettings()

app = Celery("callcenter_jobs", broker=_settings.jobs_broker_url, backend=_settings.jobs_result_url,
             include=["callcenter_jobs.webhooks", "callcenter_jobs.reports", "callcenter_jobs.exports",
                      "callcenter_jobs.purge"])
_prefix = {"global_keyprefix": _settings.jobs_key_prefix}
app.conf.update(
    broker_transport_options=_prefix,
    result_backend_transport_options=_prefix,
    result_expires=3600,
    task_acks_late=True,              # a worker that dies mid-task leaves it for another
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
    timezone="UTC",
    beat_schedule={
        "pump-events": {"task": "callcenter_jobs.webhooks.pump", "schedule": _settings.jobs_pump_interval_s},
        "run-exports": {"task": "callcenter_jobs.exports.run_pending", "schedule": _settings.jobs_pump_interval_s},
        "interval-reports": {"task": "callcenter_jobs.reports.rollup", "schedule": _settings.reports_interval_s},
        "purge": {"task": "callcenter_jobs.purge.purge", "schedule": _settings.purge_interval_s},
    },
)


USAGE = """usage: callcenter-jobs {worker,beat} [celery options]

The celery jobs of callcenter: `worker` runs the tasks (webhooks, interval reports, exports,
SQL retention), `beat` (exactly one) queues the periodic ones. The same as
`celery -A callcenter_jobs.app worker|beat ...`; `callcenter-jobs worker --help` for celery's options.
Settings: the CC_* environment variables below.
"""


def main() -> None:
    """`callcenter-jobs worker ...` / `callcenter-jobs beat ...`: celery's own command line on this app."""
    args = sys.argv[1:]
    if args in ([], ["-h"], ["--help"]):
        sys.stdout.write(USAGE + "\n" + settings_help(JobsSettings) + "\n")
        sys.exit(0 if args else 2)
    sys.exit(app.start(args))
