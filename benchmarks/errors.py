"""The bench's own error type."""


class BenchError(RuntimeError):
    """A benchmark step failed in a way the message explains (a system exited, timed out or is missing)."""
