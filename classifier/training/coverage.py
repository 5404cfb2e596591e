"""Accuracy against coverage: how many faces the unsure rule leaves answered, and how right.

A face is answered when the unsure rule (classifier.runtime.unsure) does not
flag it. Raising the confidence threshold answers fewer faces, more of them
correctly; `choose_unsure_below` picks the lowest threshold that reaches a
target accuracy on validation data. Faces too small to judge are measured by
shrinking aligned crops until their eyes are a given number of pixels apart
(`shrink_to_eye_distance`), because UTKFace's chips are all about 200 px.
"""

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from detector.align import TEMPLATE

# Candidate thresholds: calibrated confidence runs from 0.5 (a coin flip) to 1.
THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.01), 2)
# The template's eye distance: how far apart the eyes of every aligned crop are.
TEMPLATE_EYE_DISTANCE = float(np.hypot(*(TEMPLATE[1] - TEMPLATE[0])))


def answered(p_female: np.ndarray, unsure_below: float) -> np.ndarray:
    """Which faces the confidence rule answers: calibrated confidence at or above the threshold."""
    p = np.asarray(p_female, dtype=np.float64)
    return np.maximum(p, 1 - p) >= unsure_below


def operating_point(
    p_female: np.ndarray,
    labels: np.ndarray,
    groups: dict[str, np.ndarray],
    unsure_below: float,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Coverage and accuracy on answered faces at `unsure_below`, overall and per group mask."""
    correct = (np.asarray(p_female) >= threshold).astype(int) == np.asarray(labels)
    keep = answered(p_female, unsure_below)
    point: dict[str, Any] = {"unsure_below": float(unsure_below), **_scores(correct, keep)}
    point["groups"] = {name: _scores(correct[mask], keep[mask]) for name, mask in groups.items()}
    return point


def coverage_curve(
    p_female: np.ndarray,
    labels: np.ndarray,
    groups: dict[str, np.ndarray],
    threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """`operating_point` at every candidate threshold in THRESHOLDS."""
    return [operating_point(p_female, labels, groups, t, threshold) for t in THRESHOLDS]


def choose_unsure_below(
    curve: list[dict[str, Any]],
    target_accuracy: float,
    min_coverage: float = 0.0,
    group: str | None = None,
) -> float:
    """The lowest threshold reaching `target_accuracy` on answered faces, answering enough.

    Only thresholds that answer at least `min_coverage` of the faces (of
    `group`'s, if given) are candidates; when none of them reaches the target,
    the strictest candidate: the best accuracy that coverage allows.
    """
    allowed = [p for p in curve if (p["groups"][group] if group else p)["coverage"] >= min_coverage]
    for point in allowed:
        if point["accuracy"] is not None and point["accuracy"] >= target_accuracy:
            return point["unsure_below"]
    return (allowed or curve)[-1 if allowed else 0]["unsure_below"]


def shrink_to_eye_distance(crops: np.ndarray, eye_distance: float) -> np.ndarray:
    """The crops as a face whose eyes are `eye_distance` px apart would look once aligned.

    Each crop is downscaled (area averaging, as a camera would integrate) so
    that its eyes are `eye_distance` px apart, then upscaled back to its size
    bilinearly, as alignment warps a small face.
    """
    size = crops.shape[1]
    small = max(2, round(size * eye_distance / TEMPLATE_EYE_DISTANCE))
    out = np.empty_like(crops)
    for index, crop in enumerate(crops):
        reduced = cv2.resize(np.asarray(crop), (small, small), interpolation=cv2.INTER_AREA)
        out[index] = cv2.resize(reduced, (size, size), interpolation=cv2.INTER_LINEAR)
    return out


def eye_distance_sweep(
    predict: Callable[[np.ndarray], np.ndarray],
    crops: np.ndarray,
    labels: np.ndarray,
    distances: Sequence[float],
    unsure_below: float,
    threshold: float = 0.5,
) -> dict[str, dict[str, Any]]:
    """Scores of the crops at full size ("full") and shrunk to each eye distance.

    `predict` maps crops to calibrated P(female) (GenderClassifier.predict_p_female).
    """
    sweep = {}
    for distance in (None, *distances):
        shrunk = crops if distance is None else shrink_to_eye_distance(crops, distance)
        p_female = predict(shrunk)
        correct = (p_female >= threshold).astype(int) == labels
        sweep["full" if distance is None else f"{distance:g}"] = {
            "eye_distance": distance,
            **_scores(correct, answered(p_female, unsure_below)),
        }
    return sweep


def choose_min_eye_distance(sweep: dict[str, dict[str, Any]], tolerance: float) -> float:
    """The smallest eye distance above which answered accuracy stays within `tolerance` of full."""
    full = sweep["full"]["accuracy"]
    measured = sorted((p for p in sweep.values() if p["eye_distance"]), key=_eyes, reverse=True)
    chosen = _eyes(measured[0])
    for point in measured:
        if point["accuracy"] < full - tolerance:
            break
        chosen = _eyes(point)
    return chosen


def _eyes(point: dict[str, Any]) -> float:
    return float(point["eye_distance"])


def _scores(correct: np.ndarray, keep: np.ndarray) -> dict[str, Any]:
    total = len(correct)
    count = int(keep.sum())
    return {
        "faces": total,
        "answered": count,
        "coverage": count / total if total else None,
        "accuracy": float(correct[keep].mean()) if count else None,
        "accuracy_all": float(correct.mean()) if total else None,
    }
