"""The record a detection produces."""

from dataclasses import dataclass

import numpy as np

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True)
class Face:
    """One detected face in original-image pixels.

    `box` is (x, y, w, h); `landmarks` is a (5, 2) array of (x, y) points in the
    order of LANDMARK_NAMES, where "left" means the left side of the picture.
    """

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float
