"""Face finding: safe image loading, MTCNN detection and 5-point alignment.

A pure library: arrays in, arrays and records out. It knows nothing of queues
or databases.
"""

from detector.align import ALIGNED_SIZE, TEMPLATE, align_face
from detector.faces import Face
from detector.loading import ImageLoadError, LoadedImage, load_image
from detector.mtcnn_detector import DetectorSettings, FaceDetector

__all__ = [
    "ALIGNED_SIZE",
    "TEMPLATE",
    "DetectorSettings",
    "Face",
    "FaceDetector",
    "ImageLoadError",
    "LoadedImage",
    "align_face",
    "load_image",
]
