"""Keep native libraries' log lines off the terminal, unless FACEGENDER_VERBOSE=1.

LiteRT's C++ prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
straight to file descriptor 2 when an interpreter first allocates, and
TensorFlow's absl logs its oneDNN and CPU-feature notices there while it is
imported, before any log level applies; no environment variable turns them
off, so the descriptor itself is pointed at /dev/null for those moments and
restored after.
"""

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from types import ModuleType

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


def import_keras() -> ModuleType:
    """`keras`, its backend (TensorFlow, JAX) imported the first time with fd 2 silenced;
    later calls silence nothing (other threads' stderr is not lost to a no-op import)."""
    if "keras" not in sys.modules:
        with native_stderr_silenced():
            import keras  # noqa: F401
    return sys.modules["keras"]
