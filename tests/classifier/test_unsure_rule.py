"""The unsure rule: thresholds from model metadata, overrides, metadata that predates it."""

import json

import pytest

from classifier.runtime import DEFAULT_MODEL_PATH, ModelMetadata, read_metadata
from classifier.runtime.unsure import UnsureRule, eye_distance


def test_both_rules_flag_below_their_threshold_and_not_at_it() -> None:
    rule = UnsureRule(unsure_below=0.9, min_eye_distance=16)
    assert not rule.is_unsure(0.9, 16)
    assert rule.is_unsure(0.8999, 100)
    assert rule.is_unsure(0.99, 15.9)
    assert rule.overridden(min_eye_distance=0) == UnsureRule(0.9, 0)
    assert rule.overridden(unsure_below=0.5) == UnsureRule(0.5, 16)
    with pytest.raises(ValueError, match="unsure_below"):
        UnsureRule(unsure_below=1.5)
    with pytest.raises(ValueError, match="min_eye_distance"):
        UnsureRule(min_eye_distance=-1)


def test_eye_distance_is_between_the_first_two_landmarks() -> None:
    landmarks = [[10, 20], [13, 24], [50, 50], [0, 0], [1, 1]]
    assert eye_distance(landmarks) == 5


def test_the_bundled_model_has_thresholds_and_older_metadata_flags_nothing() -> None:
    bundled = read_metadata(DEFAULT_MODEL_PATH)
    assert 0.5 < bundled.unsure_below < 1 and bundled.min_eye_distance > 0
    older = json.loads(bundled.to_json())
    del older["unsure_below"], older["min_eye_distance"]
    rule = ModelMetadata.from_json(json.dumps(older)).unsure
    assert rule == UnsureRule(0, 0) and not rule.is_unsure(0.5, 0.1)
