"""callcenter-jobs: celery workers off the call path (webhooks, interval reports, CDR exports, SQL
retention). The app is `callcenter_jobs.app:app`; run `celery -A callcenter_jobs.app worker` and
`celery -A callcenter_jobs.app beat`."""
