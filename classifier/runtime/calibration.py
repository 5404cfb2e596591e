"""From raw model outputs to calibrated answers: temperature, mirror gate, threshold.

Numpy only, so training (which fits the temperature and the gate) and serving
compute them the same way.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Prediction:
    """`confidence` is the calibrated probability of the predicted `gender`."""

    gender: str
    confidence: float
    p_female: float


def calibrated_p_female(raw: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature-scale sigmoid outputs: sigmoid(logit(p) / T)."""
    p = np.clip(np.asarray(raw, dtype=np.float64), 1e-7, 1 - 1e-7)
    logits = np.log(p / (1 - p)) / temperature
    return 1.0 / (1.0 + np.exp(-logits))


def needs_mirror(raw: np.ndarray, flip_below: float) -> np.ndarray:
    """Which raw outputs are unsure enough to be averaged with their mirror image."""
    raw = np.asarray(raw)
    if flip_below >= 1:
        return np.ones(raw.shape, dtype=bool)
    return np.maximum(raw, 1 - raw) < flip_below


def to_predictions(p_female: np.ndarray, threshold: float) -> list[Prediction]:
    """One Prediction per calibrated P(female), female at or above `threshold`."""
    predictions = []
    for p in np.asarray(p_female, dtype=np.float64).ravel():
        female = p >= threshold
        predictions.append(
            Prediction(
                gender="female" if female else "male",
                confidence=float(p if female else 1 - p),
                p_female=float(p),
            )
        )
    return predictions
