"""Walk a folder tree as a stream of image-named entries, whatever bytes their names hold.

The walk works on bytes paths, so a name that is not UTF-8 (Latin-1 camera
folders, old Windows zips) is an entry like any other: it is stored as a
readable text form plus its raw bytes, and opened by those bytes. A folder
that cannot be listed becomes an entry with an error instead of aborting the
walk. Nothing is collected: memory stays flat however many files there are.
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)
_SUFFIXES = frozenset(os.fsencode(s) for s in IMAGE_SUFFIXES)


@dataclass(frozen=True)
class Entry:
    """One row-to-be: a path (readable text, raw bytes if not UTF-8), or a folder's error."""

    path: str
    path_raw: bytes | None = None
    error_code: str | None = None
    error: str | None = None


def text_form(raw: bytes) -> tuple[str, bytes | None]:
    """(readable text, raw bytes or None): bytes that are not UTF-8 show as `\\xNN`."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), raw


def os_path(path: str, path_raw: bytes | None) -> str:
    """The name the OS knows the file by, from what the database keeps."""
    return os.fsdecode(path_raw) if path_raw is not None else path


def scan(root: Path) -> Iterator[Entry]:
    """Every image-named entry under `root` (absolute), depth first, as it is listed.

    Anything named like an image is yielded, even a directory or a broken
    link, so that it is reported as an error instead of silently skipped.
    Symlinked folders are not followed (no loops). A folder that cannot be
    listed (permissions, vanished, I/O error) is yielded as an error entry.
    """
    folders = [os.fsencode(root.resolve())]
    while folders:
        folder = folders.pop()
        subfolders: list[bytes] = []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if os.path.splitext(entry.name)[1].lower() in _SUFFIXES:
                        yield Entry(*text_form(entry.path))
                    if entry.is_dir(follow_symlinks=False):
                        subfolders.append(entry.path)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            yield Entry(*text_form(folder), "unreadable", f"cannot list this folder: {reason}")
        folders.extend(sorted(subfolders, reverse=True))
