"""MTCNN face detection over batches of images, loaded once per process.

The networks and weights are the `mtcnn` package's; this module drives them
itself so that the hot path is compiled: per detection shape, one traced
TensorFlow function normalises a uint8 batch and runs PNet over the whole
scale pyramid, and RNet and ONet each run as one traced crop-and-classify
call over every proposal of the batch. The box arithmetic between the stages
is the package's own (NMS, regression, squaring), so the faces found are
those of `MTCNN.detect_faces` on the same images, to float rounding.
"""

import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from detector.faces import Face

# The package's defaults for what this module does not expose as settings.
_SCALE_FACTOR = 0.709
_NMS_PNET_SCALE, _NMS_PNET, _NMS_RNET, _NMS_ONET = 0.5, 0.7, 0.7, 0.7
# Padded detection pixels per MTCNN call. A call holds its batch in float32 with every pyramid
# level (about 50 bytes per pixel), so this bounds it near 200 MB: small images still share a
# call by the dozen, large photos go a few at a time.
_CALL_PIXELS = 4_000_000


@dataclass(frozen=True)
class DetectorSettings:
    """Detection knobs. Sizes are in pixels of the (possibly downscaled) detection image."""

    max_side: int = 1024
    min_face_size: int = 20
    threshold_pnet: float = 0.6
    threshold_rnet: float = 0.7
    threshold_onet: float = 0.7
    # A border added around each image lets MTCNN find faces that fill the whole frame.
    pad_fraction: float = 0.25
    # Images with no face are searched once more inside this wider border (0: no retry).
    # Close-ups whose face overflows the frame are found then, for no cost on other images.
    retry_pad_fraction: float = 0.75
    # Such a face is large, so the retry runs on a copy at most this big: cheap in time and
    # memory even for a folder of large photos without faces.
    retry_max_side: int = 320


class FaceDetector:
    """Finds faces and their five landmarks; the MTCNN networks load lazily, once."""

    def __init__(self, settings: DetectorSettings | None = None, device: str | None = None) -> None:
        self.settings = settings or DetectorSettings()
        self._device = device
        self._mtcnn: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Build the networks now (idempotent); otherwise the first detect does it."""
        with self._lock:
            if self._mtcnn is None:
                self._mtcnn = _CompiledMTCNN(self._device or _default_device())

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in one RGB uint8 image."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces for each RGB uint8 image; images of equal detection size share one call."""
        s = self.settings
        results = self._detect(images, s.pad_fraction, s.max_side)
        missed = [i for i, faces in enumerate(results) if not faces]
        if missed and s.retry_pad_fraction > s.pad_fraction:
            retry_side = min(s.max_side, s.retry_max_side)
            retried = self._detect([images[i] for i in missed], s.retry_pad_fraction, retry_side)
            for index, faces in zip(missed, retried, strict=True):
                results[index] = faces
        return results

    def _detect(
        self, images: list[np.ndarray], pad_fraction: float, max_side: int
    ) -> list[list[Face]]:
        self.load()
        prepared = [self._prepare(image, pad_fraction, max_side) for image in images]
        groups: dict[tuple[tuple[int, ...], int], list[int]] = defaultdict(list)
        for index, (det_image, _, pad) in enumerate(prepared):
            groups[det_image.shape, pad].append(index)
        results: list[list[Face]] = [[] for _ in images]
        for ((height, width, _), pad), group in groups.items():
            per_call = max(1, _CALL_PIXELS // (height * width))
            for start in range(0, len(group), per_call):
                indices = group[start : start + per_call]
                for row in self._run_mtcnn([prepared[i][0] for i in indices], pad):
                    index = indices[int(row[0])]
                    _, scale, _ = prepared[index]
                    image_height, image_width = images[index].shape[:2]
                    results[index].append(_to_face(row, scale, pad, image_width, image_height))
        for faces in results:
            faces.sort(key=lambda face: (face.box[1], face.box[0]))
        return results

    def _prepare(
        self, image: np.ndarray, pad_fraction: float, max_side: int
    ) -> tuple[np.ndarray, float, int]:
        """Downscale to max_side and pad; returns (detection image, scale, pad in det pixels)."""
        height, width = image.shape[:2]
        scale = min(1.0, max_side / max(height, width))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        pad = round(pad_fraction * max(image.shape[:2]))
        if pad:
            image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        return image, scale, pad

    def _run_mtcnn(self, images: list[np.ndarray], pad: int = 0) -> np.ndarray:
        """Rows [image, x1, y1, x2, y2, score, 5 xs, 5 ys] for equally shaped images.

        `pad` is the black border around each image (0: none, or unknown).
        """
        return self._mtcnn.detect(np.stack(images), pad, self.settings)


class _CompiledMTCNN:
    """PNet, RNet and ONet of the `mtcnn` package behind traced functions."""

    def __init__(self, device: str) -> None:
        import tensorflow as tf
        from mtcnn import MTCNN

        self._tf = tf
        self._device = device
        pnet, rnet, onet = (stage.model for stage in MTCNN(device=device).stages)
        self._pnet = pnet
        self._pyramids: dict[tuple[Any, ...], tuple[list[tuple[float, int, int]], Any]] = {}
        self._pyramids_lock = threading.Lock()  # detector workers share the traced functions
        # PNet's face score for a window of pure padding (black after normalisation).
        black = np.full((1, 12, 12, 3), -127.5 / 128, np.float32)
        self._padding_score = float(np.asarray(pnet(black)[1])[0, 0, 0, 1])
        spec = [
            tf.TensorSpec([None, None, None, 3], tf.float32),
            tf.TensorSpec([None, 4], tf.float32),
            tf.TensorSpec([None], tf.int32),
        ]

        @tf.function(input_signature=spec)
        def run_rnet(images: Any, boxes: Any, owners: Any) -> Any:
            return rnet(tf.image.crop_and_resize(images, boxes, owners, (24, 24)))

        @tf.function(input_signature=spec)
        def run_onet(images: Any, boxes: Any, owners: Any) -> Any:
            return onet(tf.image.crop_and_resize(images, boxes, owners, (48, 48)))

        self._rnet, self._onet = run_rnet, run_onet

    def detect(self, batch: np.ndarray, pad: int, s: DetectorSettings) -> np.ndarray:
        from mtcnn.utils.bboxes import adjust_bboxes, limit_bboxes, pick_matches

        with self._tf.device(self._device):
            count, height, width = batch.shape[:3]
            normalised, boxes = self._propose(batch, pad, s)
            if len(boxes):
                offsets, scores = self._refine(self._rnet, normalised, boxes)
                boxes[:, 5] = scores[:, 1]
                boxes = adjust_bboxes(boxes, offsets)
                boxes = pick_matches(boxes, scores_column=5, score_threshold=s.threshold_rnet)
                boxes = _square(_nms(boxes, _NMS_RNET, "union", sort=True))
            if not len(boxes):
                return np.empty((0, 16))
            offsets, marks, scores = self._refine(self._onet, normalised, boxes)
            marks = marks.astype(np.float64)
            box_w = boxes[:, 3:4] - boxes[:, 1:2] + 1
            box_h = boxes[:, 4:5] - boxes[:, 2:3] + 1
            marks[:, 0:5] = box_w * marks[:, 0:5] + boxes[:, 1:2] - 1
            marks[:, 5:10] = box_h * marks[:, 5:10] + boxes[:, 2:3] - 1
            boxes[:, 5] = scores[:, 1]
            boxes = np.concatenate([adjust_bboxes(boxes, offsets), marks], axis=-1)
            boxes = pick_matches(boxes, scores_column=5, score_threshold=s.threshold_onet)
            boxes = _nms(boxes, _NMS_ONET, "min", sort=True)
            shapes = np.tile(np.array([[height, width, 3]]), (count, 1))
            return limit_bboxes(boxes, images_shapes=shapes, limit_landmarks=False)

    def _propose(self, batch: np.ndarray, pad: int, s: DetectorSettings) -> tuple[Any, np.ndarray]:
        """PNet over the scale pyramid: the normalised batch and the squared proposals."""
        from mtcnn.utils.bboxes import generate_bounding_box, upscale_bboxes

        levels, pyramid = self._pyramid(batch.shape[1], batch.shape[2], pad, s)
        normalised, outputs = pyramid(batch)
        found = []
        for (regression, classes), (scale, top, left) in zip(outputs, levels, strict=True):
            boxes = generate_bounding_box(regression, classes, s.threshold_pnet)
            boxes[:, [1, 3]] += left
            boxes[:, [2, 4]] += top
            boxes = upscale_bboxes(boxes, np.full(len(batch), scale))
            found.append(_nms(boxes, _NMS_PNET_SCALE, "union", sort=False))
        boxes = np.concatenate(found) if found else np.empty((0, 6))
        return normalised, _square(_nms(boxes, _NMS_PNET, "union", sort=True))

    def _pyramid(
        self, height: int, width: int, pad: int, s: DetectorSettings
    ) -> tuple[list[tuple[float, int, int]], Any]:
        """The traced pyramid function for one detection shape (traced once, then reused).

        Returns (scale, top, left) per level with the function. PNet only sees the
        part of each level that the image can reach: windows wholly inside the
        black padding score far below any usable threshold (checked at load), so
        skipping them finds the same proposals for less work.
        """
        key = (height, width, pad, s.min_face_size, s.threshold_pnet)
        with self._pyramids_lock:
            if key not in self._pyramids:
                self._pyramids[key] = self._trace_pyramid(height, width, pad, s)
            return self._pyramids[key]

    def _trace_pyramid(
        self, height: int, width: int, pad: int, s: DetectorSettings
    ) -> tuple[list[tuple[float, int, int]], Any]:
        from mtcnn.utils.images import build_scale_pyramid, scale_images

        tf, pnet = self._tf, self._pnet
        crop = pad > 0 and s.threshold_pnet > 10 * self._padding_score
        levels, windows = [], []
        for scale in build_scale_pyramid(width, height, s.min_face_size, _SCALE_FACTOR):
            # tf.image.resize truncates the float size, as the package's scale_images does.
            scaled_h, scaled_w = (np.asarray([height, width]) * scale).astype(np.int32)
            rows = _reach(height, pad, int(scaled_h)) if crop else (0, int(scaled_h))
            cols = _reach(width, pad, int(scaled_w)) if crop else (0, int(scaled_w))
            levels.append((float(scale), rows[0], cols[0]))
            windows.append((float(scale), rows, cols))

        @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8)])
        def pyramid(batch: Any) -> Any:
            normalised = (tf.cast(batch, tf.float32) - 127.5) / 128
            outputs = []
            for scale, (top, bottom), (left, right) in windows:
                scaled = scale_images(normalised, scale)
                outputs.append(pnet(scaled[:, top:bottom, left:right]))
            return normalised, outputs

        pyramid.get_concrete_function()  # trace now, under the lock
        return levels, pyramid

    @staticmethod
    def _refine(network: Any, normalised: Any, boxes: np.ndarray) -> list[np.ndarray]:
        height, width = normalised.shape[1:3]
        corners = boxes[:, [2, 1, 4, 3]] / np.array([[height, width, height, width]])
        outputs = network(normalised, corners.astype(np.float32), boxes[:, 0].astype(np.int32))
        return [np.asarray(output) for output in outputs]


def _reach(size: int, pad: int, scaled: int) -> tuple[int, int]:
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


def _nms(boxes: np.ndarray, threshold: float, method: str, sort: bool) -> np.ndarray:
    """`mtcnn.utils.bboxes.smart_nms_from_bboxes`, same result, a few array calls per batch.

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


def _square(boxes: np.ndarray) -> np.ndarray:
    from mtcnn.utils.bboxes import resize_to_square

    return resize_to_square(boxes) if len(boxes) else boxes


def _to_face(row: np.ndarray, scale: float, pad: int, width: int, height: int) -> Face:
    """MTCNN row [image, x1, y1, x2, y2, score, 5 xs, 5 ys] -> Face in original pixels.

    The box is clipped to the image; landmarks are not (alignment needs them as found).
    """
    x1, y1, x2, y2 = ((row[1:5] - pad) / scale).tolist()
    x1, x2 = max(0.0, x1), min(float(width), x2)
    y1, y2 = max(0.0, y1), min(float(height), y2)
    landmarks = ((row[6:16].reshape(2, 5).T - pad) / scale).astype(np.float32)
    return Face(box=(x1, y1, x2 - x1, y2 - y1), landmarks=landmarks, score=float(row[5]))


def _default_device() -> str:
    import tensorflow as tf

    return "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"
