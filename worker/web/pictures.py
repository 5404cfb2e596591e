"""Face thumbnails and whole-image views as JPEG bytes, cut from the original files.

Boxes are in the original's EXIF-upright pixels, so files are decoded with
detector's load_image (same orientation); a big photo is decoded reduced
(JPEG DCT scaling) just enough for the output size, and the box scaled.
Results are kept in bounded in-memory LRU caches keyed by the file's
identity (path, size, mtime), so an edited file is cut again.
"""

import math
import os
from functools import lru_cache

import cv2
import numpy as np

from detector import ImageLoadError, load_image
from worker.scan import os_path

THUMB_SIDE = 160  # pixels of a thumbnail's longer side
VIEW_SIDE = 1600  # pixels of the whole-image view's longer side
MARGIN = 0.4  # context around a face box, as a share of its larger side, on each side


class NotServable(LookupError):
    """The file is outside its job's root, gone, or not an image: answered with 404."""


def servable_path(path: str, path_raw: bytes | None, root: str) -> str:
    """The real path of an image row's file when it lies inside its job's real root.

    Both are resolved (symlinks, `..`) first, so a link inside the root that
    points outside it is refused too. The resolved path is what gets opened.
    """
    real = os.path.realpath(os_path(path, path_raw))
    real_root = os.path.realpath(root)
    if os.path.commonpath([real, real_root]) != real_root or real == real_root:
        raise NotServable(path)
    return real


def file_identity(real_path: str) -> tuple[int, int]:
    """(size, mtime in ns): part of every cache key and ETag."""
    try:
        info = os.stat(real_path)
    except OSError as exc:
        raise NotServable(real_path) from exc
    return info.st_size, info.st_mtime_ns


@lru_cache(maxsize=4096)  # about 6 KB each: ~25 MB at most
def thumbnail(
    real_path: str,
    identity: tuple[int, int],
    box: tuple[float, float, float, float],
    longest: int | None,
) -> bytes:
    """A JPEG of the face box with a margin, its longer side THUMB_SIDE at most.

    `longest`: the original's longer side (from the image row), so a big photo
    is decoded only as large as the thumbnail needs; None decodes it whole.
    """
    x, y, w, h = box
    side = max(w, h) * (1 + 2 * MARGIN)
    cx, cy = x + w / 2, y + h / 2
    min_side = None
    if longest and side > 0 and longest * THUMB_SIDE / side < longest:
        min_side = math.ceil(longest * THUMB_SIDE / side)
    pixels, scale = _decode(real_path, min_side)
    height, width = pixels.shape[:2]
    left = max(0, math.floor((cx - side / 2) * scale))
    top = max(0, math.floor((cy - side / 2) * scale))
    right = min(width, math.ceil((cx + side / 2) * scale))
    bottom = min(height, math.ceil((cy + side / 2) * scale))
    if right <= left or bottom <= top:
        raise NotServable(real_path)
    return _jpeg(_fit(pixels[top:bottom, left:right], THUMB_SIDE))


@lru_cache(maxsize=64)  # about 200 KB each: ~13 MB at most
def whole_image(real_path: str, identity: tuple[int, int]) -> bytes:
    """A JPEG of the whole upright image, its longer side VIEW_SIDE at most."""
    pixels, _ = _decode(real_path, VIEW_SIDE)
    return _jpeg(_fit(pixels, VIEW_SIDE))


def _decode(real_path: str, min_side: int | None) -> tuple[np.ndarray, float]:
    """Upright RGB pixels (reduced towards `min_side`) and their scale to the original."""
    try:
        loaded = load_image(real_path, min_side=min_side)
    except ImageLoadError as exc:
        raise NotServable(real_path) from exc
    return loaded.pixels, loaded.scale


def _fit(pixels: np.ndarray, longest: int) -> np.ndarray:
    height, width = pixels.shape[:2]
    if max(height, width) <= longest:
        return pixels
    factor = longest / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def _jpeg(pixels: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85]
    )
    if not ok:
        raise NotServable("cannot encode")
    return encoded.tobytes()
