"""Keep native libraries' log lines off the terminal, unless FACEGENDER_VERBOSE=1.

LiteRT's C++ prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
straight to file descriptor 2 when an interpreter first allocates; no
environment variable turns it off, so the descriptor itself is pointed at
/dev/null for that moment and restored after.
"""

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

VERBOSE_ENV = "FACEGENDER_VERBOSE"
_lock = threading.Lock()


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """fd 2 goes to /dev/null inside the block (one thread at a time), unless verbose.

    Anything another thread writes to stderr meanwhile is lost too, so keep
    the block to the native call that logs.
    """
    if verbose():
        yield
        return
    with _lock:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(os.devnull, "wb") as null:
                os.dup2(null.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
