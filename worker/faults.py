"""Whose fault a failure is: the infrastructure's, the machine's memory, or the image's.

One place decides, because the answer sets what an image is charged:
- infrastructure (database or broker unreachable, a dropped connection, a
  deadlock) is retried with back-off and never counts an attempt;
- out of memory retries the images alone, and only then counts an attempt
  (an image that exhausts memory on its own is the poison);
- anything else is the image's or the code's, and counts.
`resume --errors` re-queues the error rows whose code is in TRANSIENT_ERROR_CODES.
"""

import re

# Error codes that say nothing final about the file: re-running it may well succeed.
# gave_up: its worker crashed or timed out every time (memory, a dying machine, a bug);
# detection_failed: the detector raised on it; unreadable: the read itself failed
# (EIO, a dropped network mount, permissions the user may fix). Broken files
# (corrupt, truncated, empty, not_an_image, too_large, ...) fail the same way again.
TRANSIENT_ERROR_CODES = frozenset({"gave_up", "detection_failed", "unreadable"})

_OUT_OF_MEMORY = re.compile(
    r"out of memory|failed to allocate|bad_alloc|OOM when allocating|ResourceExhausted", re.I
)


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and what caused it (SQLAlchemy wraps the driver's error, Celery others)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_infrastructure(exc: BaseException) -> bool:
    """The database or the broker failed, not the image: retry later, charge nothing."""
    import kombu.exceptions
    import redis.exceptions
    from sqlalchemy import exc as sql

    transient = (
        sql.OperationalError,  # unreachable, connection lost, deadlock, serialization failure
        sql.InterfaceError,
        sql.DisconnectionError,
        sql.TimeoutError,  # no pooled connection in time
        kombu.exceptions.OperationalError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        ConnectionError,
        TimeoutError,
    )
    for error in _chain(exc):
        if isinstance(error, sql.DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, transient):
            return True
    return False


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or a runtime's allocation failure (ONNX Runtime, LiteRT, TensorFlow)."""
    return any(
        isinstance(error, MemoryError)
        or _OUT_OF_MEMORY.search(f"{type(error).__name__}: {error}") is not None
        for error in _chain(exc)
    )
