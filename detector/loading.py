"""Load any image file into RGB uint8 safely, or fail with one typed error.

Photos arrive in every shape a camera or editor can write: EXIF-rotated,
grayscale, palette, alpha, 16-bit, CMYK, animated. Each becomes upright RGB
uint8; anything that cannot (missing, empty, truncated, not an image, a
decompression bomb) raises ImageLoadError with a reason code and a message a
person can act on.
"""

import errno
import hashlib
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_BYTES = 200 * 1024 * 1024


class ImageLoadError(Exception):
    """A file that cannot become an image; `reason` is a stable code for the DB and tests."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class LoadedImage:
    """Decoded pixels (upright RGB uint8, H x W x 3) and the facts stored about the file."""

    pixels: np.ndarray
    sha256: str
    width: int
    height: int


def load_image(
    path: str | os.PathLike[str],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> LoadedImage:
    """Read, hash and decode `path`; raises ImageLoadError on any failure."""
    data = _read_bytes(Path(path), max_bytes)
    return decode_image(data, max_pixels)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode in-memory file bytes; raises ImageLoadError on any failure."""
    if not data:
        raise ImageLoadError("empty", "file is empty (0 bytes)")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise ImageLoadError(
                    "too_large",
                    f"{img.width}x{img.height} is over the {max_pixels:,}-pixel limit "
                    "(possible decompression bomb)",
                )
            img.load()
            pixels = _to_rgb(ImageOps.exif_transpose(img))
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError("too_large", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError("not_an_image", "not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageLoadError(reason, f"cannot decode image: {exc}") from exc
    height, width = pixels.shape[:2]
    return LoadedImage(pixels=pixels, sha256=digest, width=width, height=height)


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise ImageLoadError("not_a_file", "is a directory, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise ImageLoadError("not_a_file", "is not a regular file (device, pipe or socket)")
        if info.st_size > max_bytes:
            raise ImageLoadError(
                "too_large", f"file is {info.st_size:,} bytes, over the {max_bytes:,}-byte limit"
            )
        return path.read_bytes()
    except ImageLoadError:
        raise
    except OSError as exc:
        raise _os_error(exc) from exc


def _os_error(exc: OSError) -> ImageLoadError:
    if exc.errno == errno.ELOOP:
        return ImageLoadError("symlink_loop", "symbolic link loop")
    if exc.errno == errno.ENOENT:
        return ImageLoadError("not_found", "file not found (deleted, or a dangling link)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ImageLoadError("unreadable", "permission denied")
    return ImageLoadError("unreadable", f"cannot read file: {exc.strerror or exc}")


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        gray = np.asarray(img, dtype=np.float64)
        if gray.max(initial=0) > 255:
            gray = gray * (255.0 / 65535.0)
        gray8 = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray8[:, :, None], 3, axis=2))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
