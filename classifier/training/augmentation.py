"""Training-time geometric augmentation of aligned crops, in numpy and OpenCV.

The seed recipe (rotation, translation, zoom, shear, horizontal flip) as one
random affine warp per image: a single resampling keeps crops sharp, and doing
it outside the model keeps it independent of the Keras backend.
"""

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random transform; each parameter is drawn uniformly in [-max, +max]."""

    rotation: float = 15.0  # degrees
    translation: float = 0.1  # fraction of the crop side, per axis
    zoom: float = 0.15  # relative scale change
    shear: float = 10.0  # degrees
    horizontal_flip: bool = True  # with probability 1/2

    @property
    def is_identity(self) -> bool:
        return not (
            self.rotation or self.translation or self.zoom or self.shear or self.horizontal_flip
        )

    def matrix(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """A random 2x3 affine matrix about the centre of a `size` x `size` crop."""
        angle = math.radians(rng.uniform(-self.rotation, self.rotation))
        shear = math.radians(rng.uniform(-self.shear, self.shear))
        scale = 1.0 + rng.uniform(-self.zoom, self.zoom)
        shift = rng.uniform(-self.translation, self.translation, size=2) * size
        flip = -1.0 if self.horizontal_flip and rng.random() < 0.5 else 1.0
        rotate = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        linear = rotate @ np.array([[1.0, math.tan(shear)], [0.0, 1.0]]) @ np.diag([flip, 1.0])
        linear *= scale
        centre = np.full(2, (size - 1) / 2)
        offset = centre + shift - linear @ centre
        return np.column_stack([linear, offset]).astype(np.float32)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`image` (S, S, 3) uint8 warped by one random transform; borders are black like
        `align_face`'s."""
        if self.is_identity:
            return np.array(image)
        size = image.shape[0]
        return cv2.warpAffine(
            np.ascontiguousarray(image),
            self.matrix(rng, size),
            (size, size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
        )
