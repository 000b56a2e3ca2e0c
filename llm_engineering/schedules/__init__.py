"""Scheduled runs without ZenML: schedule files (`schedule_file`) and this machine's crontab (`system_cron`). The
`schedules` command that creates them through ZenML's schedules is `llm_engineering.orchestration.schedules`."""
