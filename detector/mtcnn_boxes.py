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
    regression = offsets[image, :, row, col].T.astype(np.float64)  # (4, K)
    x1 = (col * _STRIDE + 1) + regression[0] * (_CELL - 1)
    y1 = (row * _STRIDE + 1) + regression[1] * (_CELL - 1)
    x2 = (col * _STRIDE + _CELL) + regression[2] * (_CELL - 1)
    y2 = (row * _STRIDE + _CELL) + regression[3] * (_CELL - 1)
    boxes = np.stack([image, x1, y1, x2, y2, scores[image, row, col]], axis=0).T
    return boxes[np.argsort(boxes[:, -1])[::-1]]


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
    """Rows [start, stop) of a pyramid level that PNet windows touching the image need.

    The image spans [pad, size - pad) of the padded axis; at `scaled` pixels it
    spans about the same fraction (one pixel of slack each side for the area
    resize). A 12-pixel window at stride 2 touching it starts at an even row;
    starting the crop on an even row keeps PNet's max-pooling grid where it
    was, so every window inside the crop scores as it would on the whole level.
    """
    ratio = scaled / size
    first = max(0, int(np.floor(pad * ratio)) - 1)
    last = min(scaled - 1, int(np.ceil((size - pad) * ratio)))
    start = max(0, (first - 11) // 2 * 2)
    stop = min(scaled, last // 2 * 2 + 14)
    return start, stop


def nms(boxes: np.ndarray, threshold: float, method: str, sort: bool) -> np.ndarray:
    """`smart_nms_from_bboxes`, same result, a few array calls per batch.

    Per image, in score order when `sort` (else in the given order), a box is
    dropped when any box before it overlaps it by more than `threshold` (IoU,
    or intersection over the smaller area for "min"), dropped or not: the
    package's rule, not greedy NMS. Images are stacked into one padded
    (images, boxes, boxes) overlap array, in chunks of bounded size, instead
    of a Python loop over images; the result keeps the package's row order
    (by image, then by score).
    """
    if not len(boxes):
        return np.empty((0, boxes.shape[1]))
    if sort:  # the package's own sort, so that ties fall the same way
        boxes = boxes[np.argsort(boxes[:, 5])[::-1]]
    images, counts = np.unique(boxes[:, 0], return_counts=True)
    order = np.argsort(boxes[:, 0], kind="stable")  # by image, keeping the score order
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keep = np.zeros(len(boxes), dtype=bool)
    for chunk in _chunks(counts):
        width = int(counts[chunk].max())
        slot = np.arange(width)
        rows = starts[chunk, None] + slot  # (images, width) positions in `order`
        valid = slot < counts[chunk, None]
        index = order[np.where(valid, rows, 0)]
        suppressed = _overlapped(boxes[index, 1:5], valid, threshold, method)
        keep[index[valid & ~suppressed]] = True
    return boxes[order[keep[order]]]


def _chunks(counts: np.ndarray, budget: int = 1 << 20) -> list[np.ndarray]:
    """Images grouped so that (images x widest^2) overlap entries stay under `budget`."""
    by_size = np.argsort(counts, kind="stable")
    chunks: list[np.ndarray] = []
    current: list[int] = []
    for image in by_size:
        if current and (len(current) + 1) * int(counts[image]) ** 2 > budget:
            chunks.append(np.array(sorted(current)))
            current = []
        current.append(image)
    chunks.append(np.array(sorted(current)))
    return chunks


def _overlapped(
    corners: np.ndarray, valid: np.ndarray, threshold: float, method: str
) -> np.ndarray:
    """(images, width) True where an earlier valid box of the same image overlaps too much.

    The overlap is computed as `mtcnn.utils.bboxes.iou` does (float64, same
    operation order), so the comparisons with `threshold` come out the same.
    """
    a, b = corners[:, None, :, :], corners[:, :, None, :]  # [i, j] pairs box j with box i
    area = (corners[..., 2] - corners[..., 0]) * (corners[..., 3] - corners[..., 1])
    height = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]))
    width = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]))
    inter = height * width
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "union":
            overlap = inter / (area[:, :, None] + area[:, None, :] - inter)
        else:
            overlap = inter / np.minimum(area[:, :, None], area[:, None, :])
    count = corners.shape[1]
    earlier = np.triu(np.ones((count, count), dtype=bool), k=1)  # i < j
    return ((overlap > threshold) & earlier & valid[:, :, None]).any(axis=1)
