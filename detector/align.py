"""Five-point similarity alignment onto one 224x224 template.

Serving and training both call `align_face`, so the classifier always sees
crops made the same way.
"""

import cv2
import numpy as np

ALIGNED_SIZE = 224

# The ArcFace 112x112 reference points, scaled by 1.6 about the crop centre and
# moved down so that the eyes-to-mouth midpoint sits at y=124: the crop then
# keeps the whole face, hairline to chin, instead of ArcFace's tight inner face.
_ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)
_SCALE = 1.6
_CENTRE_Y = 124.0
TEMPLATE: np.ndarray = np.column_stack(
    [
        (_ARCFACE_112[:, 0] - 56.0) * _SCALE + ALIGNED_SIZE / 2,
        (_ARCFACE_112[:, 1] - 72.0) * _SCALE + _CENTRE_Y,
    ]
).astype(np.float32)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Warp `image` so the five `landmarks` land on TEMPLATE; returns (size, size, 3) uint8."""
    return cv2.warpAffine(
        image,
        similarity_matrix(landmarks, size),
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
    )


def similarity_matrix(landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """The 2x3 rotation + uniform scale + shift taking `landmarks` onto the template."""
    points = np.asarray(landmarks, dtype=np.float32)
    # Every point is an inlier under this threshold, so OpenCV's final Levenberg-Marquardt
    # refinement yields the least-squares fit over all five points (as Umeyama would).
    matrix, _ = cv2.estimateAffinePartial2D(
        points,
        TEMPLATE * (size / ALIGNED_SIZE),
        method=cv2.RANSAC,
        ransacReprojThreshold=10_000.0,
        refineIters=50,
    )
    if matrix is None:  # degenerate landmarks (all points equal): centre them unscaled
        matrix = _box_matrix(points, size)
    return matrix


def _box_matrix(points: np.ndarray, size: int) -> np.ndarray:
    centre = points.mean(axis=0)
    return np.array(
        [[1.0, 0.0, size / 2 - centre[0]], [0.0, 1.0, size / 2 - centre[1]]], dtype=np.float32
    )
