"""Accuracy against coverage on real UTKFace test images with the bundled model."""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from classifier.runtime import DEFAULT_MODEL_PATH, read_metadata
from classifier.training.coverage import (
    choose_unsure_below,
    shrink_to_eye_distance,
)
from classifier.training.crops import load_or_build
from classifier.training.data import SPLIT_LISTS
from classifier.training.evaluation import evaluate

IMAGES = 40


@pytest.fixture(scope="module")
def subset(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Symlinks to a seeded sample of the test split, with a private crop cache."""
    target = tmp_path_factory.mktemp("utkface_test")
    names = (SPLIT_LISTS / "utkface_test.txt").read_text().split()
    for name in random.Random(3).sample(names, IMAGES):
        (target / name).symlink_to(data_dir / "utkface" / name)
    return target


@pytest.fixture(autouse=True)
def crop_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEGENDER_CACHE", str(tmp_path / "cache"))


def test_evaluate_reports_accuracy_against_coverage(subset: Path, tmp_path: Path) -> None:
    result = evaluate(None, subset, "test", tmp_path, backend="litert-int8")
    assert (tmp_path / "coverage.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "evaluation.json").read_text())["coverage"] == result["coverage"]
    coverage = result["coverage"]
    curve, point = coverage["curve"], coverage["operating_point"]

    assert curve[0]["unsure_below"] == 0.5 and curve[0]["coverage"] == 1
    assert curve[0]["accuracy"] == pytest.approx(result["accuracy_faces"])
    shares = [p["coverage"] for p in curve]
    assert shares == sorted(shares, reverse=True) and shares[-1] < 1
    adults, minors = curve[0]["groups"]["adult (18+)"], curve[0]["groups"]["minor (0-17)"]
    assert adults["faces"] + minors["faces"] == result["faces"]

    metadata = read_metadata(DEFAULT_MODEL_PATH)
    assert point["unsure_below"] == metadata.unsure_below
    assert point["min_eye_distance"] == metadata.min_eye_distance
    same = next(p for p in curve if p["unsure_below"] == round(metadata.unsure_below, 2))
    assert point["answered"] == same["answered"] and point["accuracy"] == same["accuracy"]


def test_choose_unsure_below_reaches_the_target_answering_enough() -> None:
    def point(threshold: float, accuracy: float, adults: float) -> dict:
        groups = {"adult": {"coverage": adults}}
        return {"unsure_below": threshold, "accuracy": accuracy, "coverage": 1, "groups": groups}

    curve = [point(0.5, 0.9, 1.0), point(0.6, 0.95, 0.95), point(0.7, 0.99, 0.8)]
    assert choose_unsure_below(curve, 0.95) == 0.6
    assert choose_unsure_below(curve, 0.98) == 0.7
    # The target needs more than the coverage allows: the best accuracy that still answers 90%.
    assert choose_unsure_below(curve, 0.98, min_coverage=0.9, group="adult") == 0.6
    assert choose_unsure_below(curve, 0.999) == 0.7  # out of reach: the strictest


def test_shrinking_a_real_crop_removes_detail_it_cannot_have(data_dir: Path) -> None:
    names = (SPLIT_LISTS / "utkface_val.txt").read_text().split()[:2]
    crops = np.asarray(load_or_build([data_dir / "utkface" / n for n in names]).crops)
    detail = []
    for eyes in (None, 24, 8):
        shrunk = crops if eyes is None else shrink_to_eye_distance(crops, eyes)
        assert shrunk.shape == crops.shape and shrunk.dtype == crops.dtype
        detail.append(np.abs(np.diff(shrunk.astype(float), axis=2)).mean())
    assert detail[0] > detail[1] > detail[2]
