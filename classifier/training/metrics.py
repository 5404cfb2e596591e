"""Scores for P(female) predictions, in plain numpy (no scikit-learn at run time).

Shared by training (model selection, temperature scaling, the flip-averaging
decision) and evaluation, so both report the same numbers the same way.
"""

import math

import numpy as np

from classifier.runtime.calibration import calibrated_p_female

_EPS = 1e-7


def binary_nll(p_female: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy (natural log) of P(female) against labels (1 = female)."""
    p = np.clip(np.asarray(p_female, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def accuracy(p_female: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> float:
    return float(np.mean((np.asarray(p_female) >= threshold) == (np.asarray(labels) == 1)))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum statistic, ties counted half; NaN if one class."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(labels) == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    ranks = ((last - counts + 1 + last) / 2)[inverse]  # average 1-based rank of each tie group
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) at every distinct threshold, from (0, 0)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    positive = (np.asarray(labels) == 1)[order]
    cuts = np.r_[np.flatnonzero(np.diff(scores[order])), len(scores) - 1]
    true_pos = np.cumsum(positive)[cuts]
    false_pos = cuts + 1 - true_pos
    n_pos, n_neg = max(int(positive.sum()), 1), max(len(positive) - int(positive.sum()), 1)
    return np.r_[0.0, false_pos / n_neg], np.r_[0.0, true_pos / n_pos]


def reliability(
    p_female: np.ndarray, labels: np.ndarray, bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per confidence bin over [0, 1]: (mean confidence, accuracy, count).

    Confidence is that of the predicted gender, max(p, 1 - p); empty bins hold NaN.
    """
    p = np.asarray(p_female, dtype=np.float64)
    predicted = p >= 0.5
    confidence = np.where(predicted, p, 1 - p)
    correct = predicted == (np.asarray(labels) == 1)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, confidence, minlength=bins) / counts
        bin_accuracy = np.bincount(which, correct.astype(float), minlength=bins) / counts
    return mean_confidence, bin_accuracy, counts


def expected_calibration_error(p_female: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Count-weighted mean |accuracy - confidence| over `bins` equal-width confidence bins."""
    mean_confidence, bin_accuracy, counts = reliability(p_female, labels, bins)
    filled = counts > 0
    gaps = np.abs(bin_accuracy[filled] - mean_confidence[filled])
    return float(np.sum(gaps * counts[filled]) / max(int(counts.sum()), 1))


def fit_temperature(
    raw_p_female: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """The T minimising the NLL of sigmoid(logit(p) / T): golden-section search over log T.

    The NLL is convex in 1/T, hence unimodal in log T, so the search finds the optimum.
    """

    def loss(log_t: float) -> float:
        return binary_nll(calibrated_p_female(raw_p_female, math.exp(log_t)), labels)

    low, high = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    while high - low > 1e-4:
        if loss_a <= loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return math.exp((low + high) / 2)
