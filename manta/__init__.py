"""manta: an S3-compatible object store that runs map/reduce jobs next to the data."""

from manta.client import Client, Job, MantaError

__all__: list[str] = ["Client", "Job", "MantaError"]
__version__ = "0.1.0"
