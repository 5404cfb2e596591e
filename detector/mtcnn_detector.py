"""MTCNN face detection over batches of images, loaded once per process."""

import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from detector.faces import Face


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
                from mtcnn import MTCNN

                self._mtcnn = MTCNN(device=self._device or _default_device())

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in one RGB uint8 image."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces for each RGB uint8 image; images of equal detection size share one call."""
        self.load()
        prepared = [self._prepare(image) for image in images]
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, (det_image, _, _) in enumerate(prepared):
            groups[det_image.shape].append(index)
        results: list[list[Face]] = [[] for _ in images]
        for indices in groups.values():
            rows = self._run_mtcnn([prepared[i][0] for i in indices])
            for row in rows:
                index = indices[int(row[0])]
                _, scale, pad = prepared[index]
                height, width = images[index].shape[:2]
                results[index].append(_to_face(row, scale, pad, width, height))
        for faces in results:
            faces.sort(key=lambda face: (face.box[1], face.box[0]))
        return results

    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, float, int]:
        """Downscale to max_side and pad; returns (detection image, scale, pad in det pixels)."""
        height, width = image.shape[:2]
        scale = min(1.0, self.settings.max_side / max(height, width))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        pad = round(self.settings.pad_fraction * max(image.shape[:2]))
        if pad:
            image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        return image, scale, pad

    def _run_mtcnn(self, images: list[np.ndarray]) -> np.ndarray:
        s = self.settings
        rows = self._mtcnn.detect_faces(
            images,
            box_format="xyxy",
            output_type="numpy",
            min_face_size=s.min_face_size,
            threshold_pnet=s.threshold_pnet,
            threshold_rnet=s.threshold_rnet,
            threshold_onet=s.threshold_onet,
        )
        return np.asarray(rows, dtype=np.float64).reshape(-1, 16)


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
