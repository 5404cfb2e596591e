"""Inference backends: LiteRT float32 matches Keras, int8 stays close, "auto" falls back."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from classifier import GenderClassifier
from classifier.inference import BACKENDS, KerasRunner, calibrated_p_female, load_runner
from classifier.litert import ArtifactMissingError, int8_paths


@pytest.fixture(scope="module")
def crops(utkface_files: list[Path]) -> np.ndarray:
    from detector import FaceDetector, align_face, load_image

    images = [load_image(p).pixels for p in utkface_files[::900][:24]]
    found = FaceDetector().detect_batch(images)
    pairs = zip(images, found, strict=True)
    return np.stack([align_face(image, faces[0].landmarks) for image, faces in pairs if faces])


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def private_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEGENDER_CACHE", str(cache))


def test_litert_float32_matches_keras(crops: np.ndarray, model_path: Path, cache: Path) -> None:
    keras_p = GenderClassifier(model_path, batch_size=8).predict_p_female(crops)
    litert = GenderClassifier(model_path, batch_size=8, backend="litert")
    assert np.allclose(litert.predict_p_female(crops), keras_p, atol=1e-4)
    assert len(list((cache / "litert").glob("*.fp32.tflite"))) == 1  # converted once, cached


def test_int8_stays_close_to_keras(crops: np.ndarray, model_path: Path) -> None:
    keras_p = GenderClassifier(model_path, batch_size=8).predict_p_female(crops)
    int8 = GenderClassifier(model_path, batch_size=8, backend="litert-int8")
    int8_p = int8.predict_p_female(crops)
    assert np.mean((int8_p >= 0.5) == (keras_p >= 0.5)) >= 0.9
    assert np.median(np.abs(int8_p - keras_p)) < 0.05


def test_mixed_precision_computes_the_backbone_in_bfloat16(
    crops: np.ndarray, model_path: Path
) -> None:
    model = KerasRunner(model_path, mixed=True)._model
    backbone = next(layer for layer in model.layers if hasattr(layer, "layers"))
    convolutions = [layer for layer in backbone.layers if "Conv2D" in type(layer).__name__]
    assert convolutions
    assert {layer.compute_dtype for layer in convolutions} == {"bfloat16"}
    assert model.layers[-1].compute_dtype == "float32"
    mixed_classifier = GenderClassifier(model_path, batch_size=8, backend="keras-mixed")
    mixed = mixed_classifier.predict_p_female(crops)
    full = GenderClassifier(model_path, batch_size=8).predict_p_female(crops)
    assert not np.array_equal(mixed, full)  # it really ran in another precision
    assert np.mean((mixed >= 0.5) == (full >= 0.5)) >= 0.9
    assert np.median(np.abs(mixed - full)) < 0.05


def test_batch_size_and_padding_do_not_change_results(crops: np.ndarray, model_path: Path) -> None:
    big = GenderClassifier(model_path, batch_size=32, backend="litert-int8")
    small = GenderClassifier(model_path, batch_size=3, backend="litert-int8")
    assert np.allclose(big.predict_p_female(crops), small.predict_p_female(crops), atol=1e-6)
    assert small.faces_per_call == 3


def test_only_unsure_faces_are_mirrored(crops: np.ndarray, model_path: Path) -> None:
    classifier = GenderClassifier(model_path, batch_size=8, backend="litert-int8")
    raw = classifier.raw_outputs(crops)
    mirror = classifier.raw_outputs(crops[:, :, ::-1])
    confidence = np.maximum(raw, 1 - raw)
    gate = float(np.median(confidence))  # half the faces are unsure
    classifier.metadata = replace(classifier.metadata, flip_average=True, flip_below=gate)
    rows: list[int] = []
    run = classifier._run
    assert run is not None
    classifier._run = lambda batch: (rows.append(len(batch)), run(batch))[1]
    got = classifier.predict_p_female(crops)
    unsure = confidence < gate
    expected = np.where(unsure, (raw + mirror) / 2, raw)
    assert 0 < unsure.sum() < len(crops)
    assert np.allclose(got, calibrated_p_female(expected, classifier.metadata.temperature))
    assert sum(rows) == len(crops) + -(-unsure.sum() // 8) * 8  # one mirror row per unsure face


def test_auto_skips_an_int8_model_made_from_another_model(tmp_path: Path, model_path: Path) -> None:
    copy = tmp_path / "model.keras"
    shutil.copy(model_path, copy)
    shutil.copy(model_path.with_suffix(".json"), copy.with_suffix(".json"))
    artifact, record = int8_paths(copy)
    shutil.copy(int8_paths(model_path)[0], artifact)
    record.write_text(json.dumps({"model_sha256": "0" * 64}))
    with pytest.raises(ArtifactMissingError):
        BACKENDS["litert-int8"](copy, 0)
    used, _ = load_runner("auto", copy)
    assert used == "litert"
