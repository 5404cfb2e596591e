"""The pixel side of MTCNN: normalising, pyramid levels and the RNet/ONet crops.

These reproduce the `mtcnn` package's TensorFlow image ops without
TensorFlow, in numpy: the weights of the area resize that makes each pyramid
level (`tf.image.resize(..., AREA)`; PNet's graph applies them) and
`tf.image.crop_and_resize` (bilinear, 0 outside the image; exactly, in
TensorFlow's float32 order).
"""

import numpy as np


def normalise(image: np.ndarray) -> np.ndarray:
    """uint8 pixels to MTCNN's input range, (x - 127.5) / 128, in float32 (exact)."""
    return (image.astype(np.float32) - np.float32(127.5)) / np.float32(128)


def planes(pixels: np.ndarray) -> np.ndarray:
    """(N, h, w, 3) uint8 images as (N, 3, h, w) float32 planes / 128: PNet's input, made
    once for all the pyramid levels (exact: 1/128 is a power of two)."""
    scaled = pixels.transpose(0, 3, 1, 2).astype(np.float32, order="C")
    scaled *= np.float32(1 / 128)
    return scaled


def level_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """A pyramid level's (height, width): the float size truncated, as the package's is."""
    scaled_h, scaled_w = (np.asarray([height, width]) * scale).astype(np.int32)
    return int(scaled_h), int(scaled_w)


def area_weights(extent: int, scaled: int, outputs: range, inputs: range) -> np.ndarray:
    """(outputs, inputs) weights of TF's area resize of `extent` pixels to `scaled`.

    Output pixel y averages the input span [y * s, (y + 1) * s), s = extent / scaled,
    each input pixel weighed by its overlap with the span (TF's resize_area kernel).
    Only the wanted outputs and the inputs that are not border are computed.
    """
    step = np.float32(extent) / np.float32(scaled)
    low = np.arange(outputs.start, outputs.stop, dtype=np.float32)[:, None] * step
    high = (np.arange(outputs.start, outputs.stop, dtype=np.float32)[:, None] + 1) * step
    first = np.arange(inputs.start, inputs.stop, dtype=np.float32)[None, :]
    overlap = np.minimum(first + 1, high) - np.maximum(first, low)
    return (np.maximum(overlap, 0) / step).astype(np.float32)


def crop_and_resize(image: np.ndarray, corners: np.ndarray, size: int) -> np.ndarray:
    """`tf.image.crop_and_resize(image[None], corners, zeros, (size, size))` for one image.

    `corners` is (K, 4) [y1, x1, y2, x2] in fractions of the image (float32);
    returns (K, size, size, 3) float32. A sample that falls outside the image
    is 0, the package's extrapolation value.
    """
    height, width = image.shape[:2]
    ys, y_inside = _samples(corners[:, 0], corners[:, 2], height, size)
    xs, x_inside = _samples(corners[:, 1], corners[:, 3], width, size)
    top, bottom, y_lerp = _neighbours(ys, height)
    left, right, x_lerp = _neighbours(xs, width)
    rows_top, rows_bottom = top[:, :, None], bottom[:, :, None]
    cols_left, cols_right = left[:, None, :], right[:, None, :]
    x_lerp = x_lerp[:, None, :, None]
    upper = image[rows_top, cols_left]
    upper += (image[rows_top, cols_right] - upper) * x_lerp
    lower = image[rows_bottom, cols_left]
    lower += (image[rows_bottom, cols_right] - lower) * x_lerp
    upper += (lower - upper) * y_lerp[:, :, None, None]
    inside = y_inside[:, :, None] & x_inside[:, None, :]
    upper[~inside] = 0
    return upper


def _samples(
    start: np.ndarray, stop: np.ndarray, extent: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates of a crop's `size` samples along one axis, and which are inside."""
    last = np.float32(extent - 1)
    step = (stop - start) * last / np.float32(size - 1)
    coords = start[:, None] * last + np.arange(size, dtype=np.float32)[None, :] * step[:, None]
    return coords, (coords >= 0) & (coords <= last)


def _neighbours(coords: np.ndarray, extent: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper source index of each sample (clamped) and its weight towards the upper."""
    low = np.floor(coords)
    lerp = coords - low
    lower = np.clip(low, 0, extent - 1).astype(np.intp)
    upper = np.clip(np.ceil(coords), 0, extent - 1).astype(np.intp)
    return lower, upper, lerp
