"""The pixel side of MTCNN: normalising, pyramid levels and the RNet/ONet crops.

These reproduce the `mtcnn` package's TensorFlow image ops without
TensorFlow: the area resize that makes each pyramid level
(`tf.image.resize(..., AREA)`) as two sparse products with its weights, and
`tf.image.crop_and_resize` (bilinear, 0 outside the image), both equal to
TensorFlow's to float rounding.
"""

import functools

import cv2
import numpy as np
from scipy import sparse

from detector.mtcnn_boxes import reach


def normalise(image: np.ndarray) -> np.ndarray:
    """uint8 pixels to MTCNN's input range, (x - 127.5) / 128, in float32 (exact)."""
    return (image.astype(np.float32) - np.float32(127.5)) / np.float32(128)


def stacked(images: np.ndarray) -> np.ndarray:
    """(N, h, w, 3) uint8 images as one float32 (h, N * 3 * w) matrix of colour planes: the
    input of `level`, made once for all the pyramid levels."""
    count, height, width, _ = images.shape
    planes = images.transpose(1, 0, 3, 2).reshape(height, count * 3 * width)
    return planes.astype(np.float32)


def level(
    pixels: np.ndarray, count: int, rows: sparse.csr_array, cols: sparse.csr_array
) -> np.ndarray:
    """A normalised pyramid level (N, 3, H', W') of `count` images `stacked` in `pixels`.

    The images are without their black border; `rows` (H', h) and `cols`
    (W', w) are the `area_weights` of their padded sizes over the inside. A
    border pixel is 0, so it adds nothing, and the resize is linear with
    weights summing to one, so normalising ((x - 127.5) / 128) after it is
    normalising before. Each level pixel averages a few image pixels: as
    sparse products a level costs about one pass over the image, not H'.
    """
    (level_height, _), (level_width, width) = rows.shape, cols.shape
    vertical = rows @ pixels  # (H', N * 3 * w)
    # OpenCV's blocked transposes put each product's axis first, where scipy wants it.
    by_column = cv2.transpose(vertical.reshape(-1, width))  # (w, H' * N * 3)
    resized = cv2.transpose(cols @ by_column).reshape(level_height, count, 3, level_width)
    normalised = np.ascontiguousarray(resized.transpose(1, 2, 0, 3))
    normalised -= np.float32(127.5)
    normalised *= np.float32(1 / 128)
    return normalised


def level_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """A pyramid level's (height, width): the float size truncated, as the package's is."""
    scaled_h, scaled_w = (np.asarray([height, width]) * scale).astype(np.int32)
    return int(scaled_h), int(scaled_w)


def area_weights(extent: int, scaled: int, outputs: range, inputs: range) -> sparse.csr_array:
    """(outputs, inputs) weights of TF's area resize of `extent` pixels to `scaled`, sparse.

    Output pixel y averages the input span [y * s, (y + 1) * s), s = extent / scaled,
    each input pixel weighed by its overlap with the span (TF's resize_area kernel).
    Only the wanted outputs and the inputs that are not border are kept.
    """
    (weights,) = _weights(extent, ((scaled, outputs),), inputs)
    return weights


@functools.lru_cache(maxsize=256)  # tens of KB each: bounded, whatever sizes a folder holds
def axis_weights(
    extent: int, pad: int, sizes: tuple[int, ...], crop: bool
) -> tuple[tuple[range, sparse.csr_array], ...]:
    """Along one axis of a padded image, for each pyramid level size: the outputs PNet sees
    (detector.mtcnn_boxes.reach when `crop`, else all) and their `area_weights` over the
    inside. All the levels at once: a folder of mixed sizes needs new ones for nearly every
    image, and made level by level they cost 6-8% more detector time on webfaces."""
    parts = [range(*reach(extent, pad, size)) if crop else range(size) for size in sizes]
    levels = tuple(zip(sizes, parts, strict=True))
    return tuple(zip(parts, _weights(extent, levels, range(pad, extent - pad)), strict=True))


def _weights(
    extent: int, levels: tuple[tuple[int, range], ...], inputs: range
) -> list[sparse.csr_array]:
    """`area_weights` for several (scaled, outputs) of one axis, computed together."""
    steps = [np.float32(extent) / np.float32(scaled) for scaled, _ in levels]
    counts = [len(outputs) for _, outputs in levels]
    output = np.concatenate([np.arange(o.start, o.stop, dtype=np.float32) for _, o in levels])
    step = np.repeat(np.asarray(steps, dtype=np.float32), counts)[:, None]
    low, high = output[:, None] * step, (output[:, None] + 1) * step
    # The inputs a span can touch: from the one holding its start, at most ceil(s) + 1.
    # Border inputs weigh 0 (at a clipped column), so every row of a level holds as many.
    reach_most = [int(np.ceil(s)) + 1 for s in steps]
    columns = np.floor(low).astype(np.int64) + np.arange(max(reach_most))
    left = columns.astype(np.float32)
    weights = np.maximum(np.minimum(left + 1, high) - np.maximum(left, low), 0) / step
    weights[(columns < inputs.start) | (columns >= inputs.stop)] = 0
    columns = (np.clip(columns, inputs.start, inputs.stop - 1) - inputs.start).astype(np.int32)
    matrices, first = [], 0
    for count, touched in zip(counts, reach_most, strict=True):
        rows = slice(first, first + count)
        data, indices = weights[rows, :touched].ravel(), columns[rows, :touched].ravel()
        pointers = np.arange(0, count * touched + 1, touched, dtype=np.int32)
        shape = (count, len(inputs))
        matrix = sparse.csr_array((data, indices, pointers), shape=shape)
        # A third of the entries are zeros (border inputs, taps past a span's end) that the
        # products would still multiply and add; the pixels are >= 0, so no sum changes.
        matrix.eliminate_zeros()
        matrices.append(matrix)
        first += count
    return matrices


def crop_and_resize(image: np.ndarray, corners: np.ndarray, size: int) -> np.ndarray:
    """`tf.image.crop_and_resize(image[None], corners, zeros, (size, size))` for one image.

    `corners` is (K, 4) [y1, x1, y2, x2] in fractions of the image (float32);
    returns (K, size, size, 3) float32. A sample that falls outside the image
    is 0, the package's extrapolation value. The samples are TensorFlow's; one
    `cv2.remap` over all the crops, stacked, interpolates them (equal to
    TensorFlow's to 1e-5 grey levels, many times faster than numpy's gathers).
    """
    height, width = image.shape[:2]
    ys, y_inside = _samples(corners[:, 0], corners[:, 2], height, size)
    xs, x_inside = _samples(corners[:, 1], corners[:, 3], width, size)
    count = len(corners)
    map_y = np.broadcast_to(ys[:, :, None], (count, size, size)).reshape(count * size, size)
    map_x = np.broadcast_to(xs[:, None, :], (count, size, size)).reshape(count * size, size)
    crops = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    crops = crops.reshape(count, size, size, 3)
    crops[~(y_inside[:, :, None] & x_inside[:, None, :])] = 0
    return crops


def _samples(
    start: np.ndarray, stop: np.ndarray, extent: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates of a crop's `size` samples along one axis, and which are inside."""
    last = np.float32(extent - 1)
    step = (stop - start) * last / np.float32(size - 1)
    coords = start[:, None] * last + np.arange(size, dtype=np.float32)[None, :] * step[:, None]
    return coords, (coords >= 0) & (coords <= last)
