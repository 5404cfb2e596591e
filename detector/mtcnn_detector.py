"""MTCNN face detection over batches of images of any sizes, loaded once per process.

The networks and weights are the `mtcnn` package's, run on ONNX Runtime
(detector.mtcnn_cascade): no TensorFlow, and no tracing or state per image
size, so a folder of mixed sizes runs as fast as one of a single size and
holds no more memory. This module prepares each image (downscaled to
`max_side`, a black border so that faces filling the frame are found),
detects a few images at a time under a pixel budget, searches images without
a face once more inside a wider border, and maps the faces back to the
original pixels. The faces are those of `mtcnn.MTCNN.detect_faces` on the
same prepared images (tests/detector/test_onnx_mtcnn.py).
"""

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from detector.faces import Face
from detector.mtcnn_cascade import Cascade

# Padded detection pixels per MTCNN call: this bounds the detection images, their pyramid
# levels and normalised copies held at once (the networks run on pieces of at most 36,864
# pixels, see detector.mtcnn_cascade): small images still share a call by the dozen, a
# 1024-px photo (1.97 MP padded) goes alone.
_CALL_PIXELS = 2_000_000


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
    """Finds faces and their five landmarks; the MTCNN networks load lazily, once.

    `threads` is ONNX Runtime's intra-op thread count per network call (0: its
    default, one per core). One detector may serve several threads at once.
    """

    def __init__(self, settings: DetectorSettings | None = None, threads: int = 0) -> None:
        self.settings = settings or DetectorSettings()
        self._threads = threads
        self._cascade: Cascade | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Build the networks now (idempotent); otherwise the first detect does it."""
        with self._lock:
            if self._cascade is None:
                self._cascade = Cascade(self._threads)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in one RGB uint8 image."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces for each RGB uint8 image; images share MTCNN calls up to a pixel budget."""
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
        shapes = [_padded(image.shape, pad_fraction, max_side) for image in images]
        results: list[list[Face]] = [[] for _ in images]
        for call in _calls(shapes):
            # Prepared per call, so only one call's detection images are held at a time.
            prepared = [self._prepare(images[i], pad_fraction, max_side) for i in call]
            rows = self._run_mtcnn([image for image, _, _ in prepared], [p for _, _, p in prepared])
            for row in rows:
                _, scale, pad = prepared[int(row[0])]
                index = call[int(row[0])]
                image_height, image_width = images[index].shape[:2]
                results[index].append(_to_face(row, scale, pad, image_width, image_height))
        for faces in results:
            faces.sort(key=lambda face: (face.box[1], face.box[0]))
        return results

    def _prepare(
        self, image: np.ndarray, pad_fraction: float, max_side: int
    ) -> tuple[np.ndarray, float, int]:
        """Downscale to max_side and pad; returns (detection image, scale, pad in det pixels)."""
        scale, size, pad = _geometry(image.shape, pad_fraction, max_side)
        if scale < 1.0:
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        if pad:
            image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        return image, scale, pad

    def _run_mtcnn(self, images: list[np.ndarray], pads: Sequence[int]) -> np.ndarray:
        """Rows [image, x1, y1, x2, y2, score, 5 xs, 5 ys] for detection images of any sizes.

        `pads` is the black border around each image (0: none, or unknown).
        """
        assert self._cascade is not None, "load() first"
        s = self.settings
        thresholds = (s.threshold_pnet, s.threshold_rnet, s.threshold_onet)
        return self._cascade.detect(images, pads, s.min_face_size, thresholds)


def _geometry(
    shape: tuple[int, ...], pad_fraction: float, max_side: int
) -> tuple[float, tuple[int, int], int]:
    """(scale, scaled (width, height), pad) of an image of `shape` (height, width, ...)."""
    height, width = shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    return scale, (width, height), round(pad_fraction * max(height, width))


def _padded(shape: tuple[int, ...], pad_fraction: float, max_side: int) -> tuple[int, int, int]:
    """(height, width, pad) of an image's detection image, without making it."""
    _, (width, height), pad = _geometry(shape, pad_fraction, max_side)
    return height + 2 * pad, width + 2 * pad, pad


def _calls(shapes: list[tuple[int, int, int]]) -> Iterator[list[int]]:
    """Image indices per MTCNN call: equal (height, width, pad) side by side, at most
    _CALL_PIXELS a call. An image larger than the budget goes alone.
    """
    order = sorted(range(len(shapes)), key=lambda i: shapes[i])
    call: list[int] = []
    pixels = 0
    for index in order:
        height, width, _ = shapes[index]
        if call and pixels + height * width > _CALL_PIXELS:
            yield call
            call, pixels = [], 0
        call.append(index)
        pixels += height * width
    if call:
        yield call


def _to_face(row: np.ndarray, scale: float, pad: int, width: int, height: int) -> Face:
    """MTCNN row [image, x1, y1, x2, y2, score, 5 xs, 5 ys] -> Face in original pixels.

    The box is clipped to the image; landmarks are not (alignment needs them as found).
    """
    x1, y1, x2, y2 = ((row[1:5] - pad) / scale).tolist()
    x1, x2 = max(0.0, x1), min(float(width), x2)
    y1, y2 = max(0.0, y1), min(float(height), y2)
    landmarks = ((row[6:16].reshape(2, 5).T - pad) / scale).astype(np.float32)
    return Face(box=(x1, y1, x2 - x1, y2 - y1), landmarks=landmarks, score=float(row[5]))
