"""Jobs: map/reduce job specs, scheduler and the bubblewrap task runner (issue 4)."""

__all__: list[str] = []
