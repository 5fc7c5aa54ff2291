"""manta: an S3-compatible object store that runs map/reduce jobs next to the data."""

__all__: list[str] = []
__version__ = "0.1.0"
