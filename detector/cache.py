"""Files this project derives once and keeps between starts, under $FACEGENDER_CACHE.

Derived graphs (MTCNN's, the classifier's ONNX ones) and training caches live
here (default ~/.cache/facegender). Writes are atomic, a temporary file renamed
into place, so processes starting at once never read half a file.
"""

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

CACHE_ENV = "FACEGENDER_CACHE"


def cache_root() -> Path:
    """$FACEGENDER_CACHE, default ~/.cache/facegender."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "facegender")


def write_atomically(target: Path, data: bytes) -> None:
    """Write `data` to `target` through a temporary file in the same folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".tmp", delete=False) as out:
        out.write(data)
    os.replace(out.name, target)


def cached_bytes(path: Path, build: Callable[[], bytes]) -> bytes:
    """The bytes stored at `path`, else `build()`'s, stored there for the next start.

    An unwritable cache only costs the build on every start.
    """
    try:
        return path.read_bytes()
    except OSError:
        pass
    data = build()
    with contextlib.suppress(OSError):
        write_atomically(path, data)
    return data
