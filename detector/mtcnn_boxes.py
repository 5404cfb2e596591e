"""MTCNN's box arithmetic in numpy: scale pyramid, proposals, regression, squaring, NMS.

Boxes are rows [image, x1, y1, x2, y2, score, ...] in detection pixels, as in
the `mtcnn` package. These functions reproduce its `mtcnn.utils.bboxes` and
`build_scale_pyramid` (MIT licence, (c) 2019-2024 Ivan de Paz Centeno), the
same operations in the same order, so the faces come out as the package's;
they live here because importing the package imports TensorFlow. `nms` does
the package's per-image loop as a few batched array calls.
"""

import numpy as np

# PNet scores one 12x12 window every 2 pixels of a pyramid level.
_CELL, _STRIDE = 12, 2


def scale_pyramid(width: int, height: int, min_face_size: int, factor: float) -> np.ndarray:
    """Scales of the pyramid levels (`build_scale_pyramid` with min_size 12)."""
    count = round(-((np.log(min(width, height) / _CELL) / np.log(factor)) + 1))
    return (_CELL / min_face_size) * factor ** np.arange(count)


def proposals(offsets: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """PNet windows scoring above `threshold`, regressed, best first (`generate_bounding_box`).

    `offsets` is (N, 4, H, W) and `scores` (N, H, W), as `MtcnnNetworks.pnet` returns them.
    """
    image, row, col = np.nonzero(scores > threshold)
    if not len(image):  # most levels of most images: skip the arithmetic on nothing
        return np.empty((0, 6))
    boxes = np.c_[image, windows(row, col, offsets[image, :, row, col], scores[image, row, col])]
    return boxes[np.argsort(boxes[:, -1])[::-1]]


def windows(row: np.ndarray, col: np.ndarray, offsets: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Rows [x1, y1, x2, y2, score] of the PNet windows at output cells (row, col) of a level,
    moved by their `offsets` (K, 4)."""
    regression = offsets.T.astype(np.float64)  # (4, K)
    x1 = (col * _STRIDE + 1) + regression[0] * (_CELL - 1)
    y1 = (row * _STRIDE + 1) + regression[1] * (_CELL - 1)
    x2 = (col * _STRIDE + _CELL) + regression[2] * (_CELL - 1)
    y2 = (row * _STRIDE + _CELL) + regression[3] * (_CELL - 1)
    return np.stack([x1, y1, x2, y2, score], axis=0).T


def regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Boxes moved by RNet/ONet offsets, in units of the box size (`adjust_bboxes`)."""
    boxes = boxes.copy()
    width = boxes[:, 3] - boxes[:, 1] + 1
    height = boxes[:, 4] - boxes[:, 2] + 1
    boxes[:, 1:5] += offsets * np.stack([width, height, width, height], axis=-1)
    return boxes


def place_landmarks(landmarks: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """ONet's landmarks (fractions of the box: 5 xs, 5 ys) in pixels (`adjust_landmarks`).

    Kept in float32 as the package keeps them.
    """
    landmarks = landmarks.copy()
    width = boxes[:, 3:4] - boxes[:, 1:2] + 1
    height = boxes[:, 4:5] - boxes[:, 2:3] + 1
    landmarks[:, 0:5] = width * landmarks[:, 0:5] + boxes[:, 1:2] - 1
    landmarks[:, 5:10] = height * landmarks[:, 5:10] + boxes[:, 2:3] - 1
    return landmarks


def square(boxes: np.ndarray) -> np.ndarray:
    """Each box grown to a square on its longer side, same centre (`resize_to_square`)."""
    boxes = boxes.copy()
    height = boxes[:, 4] - boxes[:, 2]
    width = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(width, height)
    boxes[:, 1] = boxes[:, 1] + width * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 2] + height * 0.5 - side * 0.5
    boxes[:, 3:5] = boxes[:, 1:3] + np.tile(side, (2, 1)).T
    return boxes


def clip(boxes: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Box corners limited to each row's image, landmarks left alone (`limit_bboxes`)."""
    boxes = boxes.copy()
    boxes[:, [1, 3]] = np.minimum(np.maximum(boxes[:, [1, 3]], 0), (widths - 1)[:, None])
    boxes[:, [2, 4]] = np.minimum(np.maximum(boxes[:, [2, 4]], 0), (heights - 1)[:, None])
    return boxes


def reach(size: int, pad: int, scaled: int) -> tuple[int, int]:
    """Rows [start, stop) of a pyramid level holding the PNet windows half inside the image.

    The image spans [pad, size - pad) of the padded axis; at `scaled` pixels it
    spans about the same fraction (one pixel of slack each side for the area
    resize). Windows with more than half of their 12 pixels in the black border
    are left out: they cost a third of PNet's work on 200-px chips, and no face
    came from them on UTKFace, webfaces or the crowd photos (2,412 faces, the
    same to 0.000 px with them; from a quarter inside on, landmarks moved up to
    1 px). A window at stride 2 starts at an even row; starting the crop on an
    even row keeps PNet's max-pooling grid where it was, so every window inside
    the crop scores as it would on the whole level.
    """
    ratio = scaled / size
    first = max(0, int(np.floor(pad * ratio)) - 1)
    last = min(scaled - 1, int(np.ceil((size - pad) * ratio)))
    start = max(0, (first - _CELL // 2) // 2 * 2)
    stop = min(scaled, last // 2 * 2 + 3 + _CELL // 2)
    return start, stop


def nms(boxes: np.ndarray, threshold: float, method: str, sort: bool) -> np.ndarray:
    """`smart_nms_from_bboxes`, same result, in memory that grows with the boxes, not their square.

    Per image, in score order when `sort` (else in the given order), a box is
    dropped when any box before it overlaps it by more than `threshold` (IoU,
    or intersection over the smaller area for "min"), dropped or not: the
    package's rule, not greedy NMS. Such an overlap needs the two boxes to
    intersect, so only pairs whose x spans meet are compared (a sweep over
    the boxes sorted by x1), a bounded slice of pairs at a time: a crowd's
    thousands of PNet proposals cost a few MB instead of their N x N
    matrices. The result keeps the package's row order (by image, then by
    score). `threshold` must be >= 0.
    """
    if not len(boxes):
        return np.empty((0, boxes.shape[1]))
    if sort:  # the package's own sort, so that ties fall the same way
        boxes = boxes[np.argsort(boxes[:, 5])[::-1]]
    boxes = boxes[np.argsort(boxes[:, 0], kind="stable")]  # by image, keeping the score order
    if len(boxes) <= _FEW:
        return boxes[~_suppressed_few(boxes, threshold, method)]
    return boxes[~_suppressed(boxes, threshold, method)]


# Up to this many boxes, comparing every pair at once is cheaper than the sweep's set-up.
_FEW = 128


def _suppressed_few(boxes: np.ndarray, threshold: float, method: str) -> np.ndarray:
    """`_suppressed` for a few boxes: every pair of one image, earlier and later."""
    earlier, later = np.triu_indices(len(boxes), 1)
    pair = boxes[earlier, 0] == boxes[later, 0]
    earlier, later = earlier[pair], later[pair]
    over = _overlap(boxes[earlier, 1:5], boxes[later, 1:5], method) > threshold
    suppressed = np.zeros(len(boxes), dtype=bool)
    suppressed[later[over]] = True
    return suppressed


def _suppressed(boxes: np.ndarray, threshold: float, method: str) -> np.ndarray:
    """True for each box that an earlier box of its image overlaps by more than `threshold`.

    Rows are by image, earlier first. Each box's candidates are the boxes of
    its image whose x1 lies within (x1 - widest, x2) (a pixel of slack each
    side): every box that can intersect it.
    """
    x1, x2 = boxes[:, 1], boxes[:, 3]
    widest = max(float(np.max(x2 - x1)), 0.0) + 1
    _, image = np.unique(boxes[:, 0], return_inverse=True)
    # One sorted axis for all images: each image's x1s shifted past the previous image's reach.
    span = float(np.max(x2) - np.min(x1)) + 2 * widest + 2
    key = (x1 - np.min(x1)) + image * span
    by_key = np.argsort(key, kind="stable")
    low = np.searchsorted(key[by_key], key - widest, "left")
    high = np.searchsorted(key[by_key], key + np.maximum(x2 - x1, 0) + 1, "right")
    suppressed = np.zeros(len(boxes), dtype=bool)
    for first, stop in _slices(high - low):
        counts = (high - low)[first:stop]
        later = np.repeat(np.arange(first, stop), counts)
        offset = np.arange(len(later)) - np.repeat(np.cumsum(counts) - counts, counts)
        earlier = by_key[np.repeat(low[first:stop], counts) + offset]
        pair = (earlier < later) & (image[earlier] == image[later])
        earlier, later = earlier[pair], later[pair]
        over = _overlap(boxes[earlier, 1:5], boxes[later, 1:5], method) > threshold
        suppressed[later[over]] = True
    return suppressed


def _slices(counts: np.ndarray, budget: int = 1 << 18) -> list[tuple[int, int]]:
    """Consecutive [first, stop) row ranges holding about `budget` candidate pairs each."""
    ends = np.cumsum(counts)
    cuts = np.searchsorted(ends, np.arange(budget, int(ends[-1]), budget), "right")
    bounds = np.unique(np.concatenate([[0], cuts, [len(counts)]]))
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=False))


def _overlap(a: np.ndarray, b: np.ndarray, method: str) -> np.ndarray:
    """Overlap of box pairs (rows of corners), as `mtcnn.utils.bboxes.iou` computes it.

    The same float64 operations in the same order, so the comparisons with a
    threshold come out the package's.
    """
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    height = np.maximum(0, np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]))
    width = np.maximum(0, np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]))
    inter = height * width
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "union":
            return inter / (area_a + area_b - inter)
        return inter / np.minimum(area_a, area_b)
