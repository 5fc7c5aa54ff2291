"""Jobs: map/reduce job specs, durable job/task records, the scheduler (locality
placement, retries, resume), the front-door task runner and the node-side task agent
(bubblewrap containers)."""

from jobs import errors
from jobs.agent import TaskAgent
from jobs.records import TABLES, JobRecords, jobs_bucket
from jobs.sandbox import Sandbox, SandboxConfig, TaskLimits, TaskResult, TaskSpec
from jobs.scheduler import JobScheduler, SchedulerConfig
from jobs.spec import JobSpec, Phase, parse_spec

__all__ = [
    "TABLES",
    "JobRecords",
    "JobScheduler",
    "JobSpec",
    "Phase",
    "Sandbox",
    "SandboxConfig",
    "SchedulerConfig",
    "TaskAgent",
    "TaskLimits",
    "TaskResult",
    "TaskSpec",
    "errors",
    "jobs_bucket",
    "parse_spec",
]
