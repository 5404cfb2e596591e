"""Load any image file into RGB uint8 safely, or fail with one typed error.

Photos arrive in every shape a camera or editor can write: EXIF-rotated,
grayscale, palette, alpha, 16-bit, CMYK, animated. Each becomes upright RGB
uint8; anything that cannot (missing, empty, truncated, not an image, a
decompression bomb) raises ImageLoadError with a reason code and a message a
person can act on.

Large photos need not be decoded whole: given `min_side`, a JPEG is decoded
by libjpeg at the largest power-of-two reduction (at most 8) whose longest
side stays at least `min_side` (a 24-MP photo costs a quarter of its pixels
or less), and other formats are resized after decoding to that longest side.
`LoadedImage.scale` says how to map its pixels back to the file's: original
= decoded / scale.

Pillow reads every file's header (size, EXIF orientation, format) and
decodes every format; a complete RGB or grayscale JPEG, most of a photo
folder, is decoded by OpenCV instead: the same libjpeg-turbo pixels (equal
on UTKFace, webfaces and the crowd photos) in a third of Pillow's time,
which was 10% of the work on 448-px photos.
"""

import errno
import hashlib
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

# HEIC/HEIF (iPhone photos) decode through libheif; AVIF through Pillow's own plugin.
register_heif_opener()
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif"}

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_BYTES = 200 * 1024 * 1024
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_REDUCED_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


class ImageLoadError(Exception):
    """A file that cannot become an image; `reason` is a stable code for the DB and tests."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class LoadedImage:
    """Decoded pixels (upright RGB uint8, H x W x 3) and the facts stored about the file.

    `width` and `height` are the upright original's; `pixels` may be smaller by
    `scale` (decoded pixels per original pixel, 1.0 when decoded whole).
    """

    pixels: np.ndarray
    sha256: str
    width: int
    height: int
    scale: float = 1.0


def load_image(
    path: str | os.PathLike[str],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    min_side: int | None = None,
) -> LoadedImage:
    """Read, hash and decode `path` (reduced towards `min_side`, see the module doc).

    Raises ImageLoadError on any failure.
    """
    data = _read_bytes(Path(path), max_bytes)
    return decode_image(data, max_pixels, min_side)


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> LoadedImage:
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
            stored = img.size
            if img.getexif().get(ExifTags.Base.Orientation) in _TRANSPOSED:
                stored = stored[::-1]
            reduction: int | None
            decoded = _decoded_jpeg(img, data, min_side)
            if decoded is not None:
                pixels, reduction = decoded
            else:
                reduction = _draft(img, min_side) if min_side else 1
                img.load()
                pixels = _to_rgb(ImageOps.exif_transpose(img))
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError("too_large", str(exc)) from exc
    except UnidentifiedImageError as exc:
        if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
            raise ImageLoadError(
                "corrupt",
                f"cannot decode this HEIF/AVIF file ({data[8:12].decode()}): truncated, "
                "damaged, or in a codec this installation lacks",
            ) from exc
        raise ImageLoadError("not_an_image", "not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageLoadError(reason, f"cannot decode image: {exc}") from exc
    scale = 1.0 / (reduction or 1)
    if min_side and reduction is None and max(stored) > min_side:  # not a JPEG: resize
        scale = min_side / max(stored)
        size = (max(1, round(stored[0] * scale)), max(1, round(stored[1] * scale)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    return LoadedImage(pixels, digest, width=stored[0], height=stored[1], scale=scale)


def _decoded_jpeg(
    img: Image.Image, data: bytes, min_side: int | None
) -> tuple[np.ndarray, int] | None:
    """(upright RGB pixels, reduction) of a complete RGB or grayscale JPEG, reduced as
    `_draft` would, by OpenCV (which applies the EXIF orientation itself); None for any
    other file, or one OpenCV cannot decode, which Pillow then decodes or rejects.

    Only a file ending in libjpeg's end-of-image marker: OpenCV fills a truncated
    file's missing rows with grey where Pillow reports it truncated.
    """
    if img.format != "JPEG" or img.mode not in ("RGB", "L"):
        return None
    if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        return None
    reduction = _reduction(img.size, min_side) if min_side else 1
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED_FLAGS[reduction])
    if bgr is None:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), reduction


def _reduction(size: tuple[int, int], min_side: int) -> int:
    """The largest power-of-two reduction, at most 8, keeping the longest side >= min_side."""
    reduction = 1
    while reduction < 8 and max(size) // (2 * reduction) >= min_side:
        reduction *= 2
    return reduction


def _draft(img: Image.Image, min_side: int) -> int | None:
    """Ask a JPEG's decoder for its largest reduction keeping `min_side`; returns it.

    libjpeg reduces by 2, 4 or 8 while decoding (DCT scaling), the cheapest
    way to a smaller image; Pillow picks the largest that keeps at least the
    size asked for. None: the format has no such mode.
    """
    width, height = img.size
    reduction = _reduction(img.size, min_side)
    drafted = img.draft("RGB", (max(1, width // reduction), max(1, height // reduction)))
    return None if drafted is None else round(width / drafted[1][2])  # box: original / reduction


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
