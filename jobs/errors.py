"""Job errors: invalid specs and requests (typed, for the API layer to map), and the one
list of user-facing task error codes (Marlin's)."""

from __future__ import annotations

# task error codes, as recorded on failed tasks and shown by `manta job errors`
USER_TASK_ERROR = "UserTaskError"          # the user's command exited non-zero
TASK_INIT_ERROR = "TaskInitError"          # an asset was missing or `init` failed
TASK_KILLED_ERROR = "TaskKilledError"      # a limit was hit (time, memory, processes, output, disk)
JOB_CANCELLED_ERROR = "JobCancelledError"  # the job was cancelled while the task was queued or running
INTERNAL_ERROR = "InternalError"           # anything else; node failures are retried first
RESOURCE_NOT_FOUND = "ResourceNotFoundError"  # an input object does not exist or the owner may not read it
QUOTA_EXCEEDED_ERROR = "QuotaExceededError"  # the owner is at a limit (objects, bytes, outputs)


class JobError(Exception):
    """Base of the errors the jobs API reports to clients."""


class InvalidJobSpec(JobError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NoSuchJob(JobError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} does not exist")
        self.job_id = job_id


class JobInputsClosed(JobError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} takes no more inputs (ended or cancelled)")
        self.job_id = job_id


class AccessDenied(JobError):
    """An input the job's owner may not read (neither theirs nor shared with them)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name}: access denied")
        self.name = name


class QuotaExceeded(JobError):
    """The job's owner is at one of its limits (running jobs, outputs per job)."""

    def __init__(self, owner: str, resource: str, limit: int) -> None:
        super().__init__(f"account {owner!r} is at its limit of {limit} {resource}")
        self.owner = owner
        self.resource = resource
        self.limit = limit


class NodeFailure(Exception):
    """A task could not run because of its node (not the user's command): retried elsewhere."""


class NoSuchImage(JobError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no task image named {name!r} (manta admin image ls lists them)")
        self.name = name


class ImageError(JobError):
    """An image could not be built or imported; `message` says why (pip's own words for a build)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
