"""The Python client: `Client` (objects through boto3, jobs through the signed jobs API),
`Job`, `Function` (a Python function as a phase, with its own input and output), and one
`MantaError` family of errors. See `manta.client.client` for a tour."""

from manta.client.client import Client
from manta.client.errors import (
    AccessDenied,
    BadCredentials,
    BucketExists,
    BucketNotEmpty,
    JobFailed,
    MantaError,
    NoSuchBucket,
    NoSuchJob,
    NoSuchKey,
    NotFound,
    Unreachable,
)
from manta.client.functions import Function
from manta.client.jobs import Job
from manta.client.paths import split_path

__all__ = ["AccessDenied", "BadCredentials", "BucketExists", "BucketNotEmpty", "Client", "Function", "Job",
           "JobFailed", "MantaError", "NoSuchBucket", "NoSuchJob", "NoSuchKey", "NotFound", "Unreachable",
           "split_path"]
