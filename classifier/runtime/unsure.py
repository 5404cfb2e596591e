"""When an answer is not worth trusting: low calibrated confidence, or a face too small to judge.

The model still gives its male/female answer for every face (accuracy figures
stay comparable); `unsure` only says that this answer should not be relied
on. Both thresholds come from the model's metadata, chosen on validation data
(see classifier.training.coverage), and may be overridden per job.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UnsureRule:
    """Unsure: confidence < `unsure_below`, or eyes (original pixels) < `min_eye_distance` apart.

    Zero disables a rule: metadata written before these fields existed flags nothing.
    """

    unsure_below: float = 0.0
    min_eye_distance: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.unsure_below <= 1:
            raise ValueError(f"unsure_below must be within [0, 1], not {self.unsure_below}")
        if self.min_eye_distance < 0:
            raise ValueError(f"min_eye_distance must be >= 0, not {self.min_eye_distance}")

    def is_unsure(self, confidence: float, eye_distance: float) -> bool:
        return confidence < self.unsure_below or eye_distance < self.min_eye_distance

    def overridden(
        self, unsure_below: float | None = None, min_eye_distance: float | None = None
    ) -> "UnsureRule":
        """This rule with the given thresholds replaced (None keeps the current one)."""
        return UnsureRule(
            self.unsure_below if unsure_below is None else unsure_below,
            self.min_eye_distance if min_eye_distance is None else min_eye_distance,
        )


def eye_distance(landmarks: np.ndarray) -> float:
    """Distance between the two eyes (the first two of the five landmarks), in their pixels."""
    points = np.asarray(landmarks, dtype=np.float64)
    return float(np.hypot(*(points[1] - points[0])))
