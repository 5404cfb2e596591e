"""Accuracy of a saved model on one split, measured the way the model is served.

Predictions go through GenderClassifier (metadata threshold, temperature and
flip-averaging included) on crops that the serving detector and alignment
made. An image in which no face is found counts as wrong, because that is
what a user of the whole pipeline sees; loss, ROC AUC and calibration need a
probability, so they cover the images with a face. The coverage report says
how many faces the unsure rule answers, and how accurately.
"""

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from classifier.runtime import DEFAULT_MODEL_PATH, GenderClassifier, ModelMetadata
from classifier.training.coverage import coverage_curve, operating_point
from classifier.training.data import SPLITS, SplitCrops, load_splits, require
from classifier.training.datasets import GENDERS, RACES, LabelledImage
from classifier.training.metrics import (
    accuracy,
    binary_nll,
    expected_calibration_error,
    reliability,
    roc_auc,
    roc_curve,
)
from classifier.training.plots import plot_coverage, plot_evaluation

AGE_BAND_NAMES = ("0-12", "13-17", "18-39", "40-59", "60+")
NO_FACE = -1
log = logging.getLogger(__name__)


def predict_split(
    classifier: GenderClassifier, split: SplitCrops, flip: bool = False, chunk: int = 512
) -> np.ndarray:
    """P(female) for the split's images that have a face, in order; mirrored crops if `flip`."""
    rows = split.rows[split.found]
    outputs = [np.zeros(0)]
    for start in range(0, len(rows), chunk):
        crops = split.cropset.crops[rows[start : start + chunk]]
        outputs.append(classifier.predict_p_female(crops[:, :, ::-1] if flip else crops))
    return np.concatenate(outputs)


def evaluate(
    model_path: str | Path | None,
    data_dir: str | Path,
    split: str = "test",
    out_dir: str | Path | None = None,
    limit: int | None = None,
    backend: str = "keras",
) -> dict[str, Any]:
    """Scores of the model on `split`; writes evaluation.json and evaluation.png to `out_dir`.

    `model_path` None means the configured default model; `out_dir` None means
    the model's folder (or runs/evaluation-<version> for the bundled model);
    `backend` is the inference runtime (see classifier.runtime.backends.BACKENDS).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    classifier = GenderClassifier(model_path, backend=backend)
    data_dir = Path(data_dir)
    splits = load_splits(data_dir, limit, only=(split,))
    require(splits, (split,), data_dir)
    data = splits[split]
    p_female = predict_split(classifier, data)
    result = {
        "model": str(classifier.model_path),
        "model_version": classifier.version,
        "data": data_dir.resolve().name,
        "split": split,
        "threshold": classifier.metadata.threshold,
        "temperature": classifier.metadata.temperature,
        "flip_average": classifier.metadata.flip_average,
        "flip_below": classifier.metadata.flip_below,
        "backend": classifier.backend_used,
        **summarise(data, p_female, classifier.metadata.threshold),
        "coverage": coverage_report(data, p_female, classifier.metadata),
    }
    out = Path(out_dir) if out_dir is not None else _default_out(classifier)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    labels = data.labels[data.found]
    plot_evaluation(
        result,
        roc_curve(p_female, labels),
        reliability(p_female, labels),
        out / "evaluation.png",
    )
    plot_coverage(result, out / "coverage.png")
    log.info("wrote %s", out / "evaluation.json")
    return result


def coverage_report(
    split: SplitCrops, p_female: np.ndarray, metadata: ModelMetadata
) -> dict[str, Any]:
    """Accuracy on answered faces against coverage, and the model's own operating point.

    Only the confidence rule applies: UTKFace's chips all have eyes far
    enough apart for the eye-distance rule (see classifier.training.coverage).
    Coverage is a share of the faces found, overall and for adults and minors.
    """
    labels = split.labels[split.found]
    faces = [image for image, found in zip(split.images, split.found, strict=True) if found]
    ages = np.array([-1 if image.age is None else image.age for image in faces])
    groups = {"adult (18+)": ages >= 18, "minor (0-17)": (ages >= 0) & (ages < 18)}
    curve = coverage_curve(p_female, labels, groups, metadata.threshold)
    point = operating_point(p_female, labels, groups, metadata.unsure_below, metadata.threshold)
    return {
        "operating_point": {**point, "min_eye_distance": metadata.min_eye_distance},
        "curve": curve,
    }


def summarise(split: SplitCrops, p_female: np.ndarray, threshold: float) -> dict[str, Any]:
    """Scores from P(female) of the split's images with a face (in order); see module doc."""
    labels, found = split.labels, split.found
    predicted = np.full(len(labels), NO_FACE)
    predicted[found] = (p_female >= threshold).astype(int)
    correct = predicted == labels
    face_labels = labels[found]
    matrix = [
        [int(np.sum((labels == t) & (predicted == p))) for p in (0, 1, NO_FACE)] for t in (0, 1)
    ]
    return {
        "images": len(split.images),
        "faces": int(found.sum()),
        "no_face": split.no_face,
        "accuracy": float(correct.mean()),
        "accuracy_faces": accuracy(p_female, face_labels, threshold),
        "loss": binary_nll(p_female, face_labels),
        "roc_auc": _finite(roc_auc(p_female, face_labels)),
        "ece": expected_calibration_error(p_female, face_labels, bins=15),
        "confidently_wrong": confidently_wrong(p_female, face_labels, threshold),
        "confusion": {"true": list(GENDERS), "predicted": [*GENDERS, "no_face"], "matrix": matrix},
        **group_accuracies(split.images, correct, predicted),
    }


def confidently_wrong(
    p_female: np.ndarray, labels: np.ndarray, threshold: float, confidence: float = 0.9
) -> float:
    """Share of faces answered wrongly with calibrated confidence >= `confidence`: the
    mistakes a user has no reason to doubt."""
    p = np.asarray(p_female, dtype=np.float64)
    wrong = (p >= threshold).astype(int) != np.asarray(labels)
    return float(np.mean(wrong & (np.maximum(p, 1 - p) >= confidence))) if len(p) else 0.0


def group_accuracies(
    images: list[LabelledImage], correct: np.ndarray, predicted: np.ndarray
) -> dict[str, dict[str, dict[str, Any]]]:
    """Accuracy per gender, race, age band and adult/minor; `predicted` uses NO_FACE."""
    return {
        "by_gender": _groups(images, correct, predicted, lambda i: GENDERS[i.gender], GENDERS),
        "by_race": _groups(images, correct, predicted, lambda i: i.race_name, RACES),
        "by_age_band": _groups(images, correct, predicted, lambda i: i.age_band, AGE_BAND_NAMES),
        "by_age_group": _groups(
            images, correct, predicted, _adult_or_minor, ("adult (18+)", "minor (0-17)")
        ),
    }


def _groups(
    images: list[LabelledImage],
    correct: np.ndarray,
    predicted: np.ndarray,
    key: Any,
    order: tuple[str, ...],
) -> dict[str, dict[str, Any]]:
    """{group: {images, accuracy, no_face}} for the groups present, in `order`."""
    names = np.array([key(image) for image in images], dtype=object)
    groups = {}
    for name in order:
        member = names == name
        if member.any():
            groups[name] = {
                "images": int(member.sum()),
                "accuracy": float(correct[member].mean()),
                "no_face": int(np.sum(predicted[member] == NO_FACE)),
            }
    return groups


def _adult_or_minor(image: LabelledImage) -> str | None:
    if image.age is None:
        return None
    return "adult (18+)" if image.age >= 18 else "minor (0-17)"


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def _default_out(classifier: GenderClassifier) -> Path:
    if classifier.model_path.resolve() == DEFAULT_MODEL_PATH.resolve():
        return Path("runs") / f"evaluation-{classifier.version}"
    return classifier.model_path.parent
