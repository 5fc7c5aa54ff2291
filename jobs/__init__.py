"""Jobs: map/reduce job specs, durable job/task records, the scheduler (locality
placement, retries, resume) and the bubblewrap task runner."""

from jobs import errors
from jobs.records import JobRecords, jobs_bucket
from jobs.sandbox import Sandbox, SandboxConfig, TaskLimits, TaskResult, TaskSpec
from jobs.scheduler import JobScheduler, SchedulerConfig
from jobs.spec import JobSpec, Phase, parse_spec

__all__ = [
    "JobRecords",
    "JobScheduler",
    "JobSpec",
    "Phase",
    "Sandbox",
    "SandboxConfig",
    "SchedulerConfig",
    "TaskLimits",
    "TaskResult",
    "TaskSpec",
    "errors",
    "jobs_bucket",
    "parse_spec",
]
