"""Inference backends: float32 runtimes match Keras, int8 stays close, "auto" picks by files
and by CPU."""

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from classifier import GenderClassifier
from classifier.runtime.artifacts import (
    ArtifactMissingError,
    file_sha256,
    litert_paths,
    onnx_ranges_path,
)
from classifier.runtime.backends import BACKENDS, cpu_runtimes, load_runner
from classifier.runtime.calibration import calibrated_p_female
from classifier.runtime.keras_runner import KerasRunner


@pytest.fixture(scope="module")
def crops(utkface_files: list[Path]) -> np.ndarray:
    from detector import FaceDetector, align_face, load_image

    images = [load_image(p).pixels for p in utkface_files[::900][:24]]
    found = FaceDetector().detect_batch(images)
    pairs = zip(images, found, strict=True)
    return np.stack([align_face(image, faces[0].landmarks) for image, faces in pairs if faces])


def copy_model(model_path: Path, folder: Path, with_int8: bool = False) -> Path:
    """The model and its metadata (and its int8 file) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / model_path.name
    shutil.copy(model_path, copy)
    shutil.copy(model_path.with_suffix(".json"), copy.with_suffix(".json"))
    if with_int8:
        for source, target in zip(
            litert_paths(model_path, "int8"), litert_paths(copy, "int8"), strict=True
        ):
            shutil.copy(source, target)
    return copy


@pytest.fixture(scope="module")
def exported(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the model with only its float32 LiteRT file, made by the export code."""
    from classifier.training.export import export_fp32

    copy = copy_model(model_path, tmp_path_factory.mktemp("exported"))
    export_fp32(copy)
    return copy


def test_litert_float32_matches_keras(crops: np.ndarray, exported: Path) -> None:
    keras_p = GenderClassifier(exported, batch_size=8, backend="keras").predict_p_female(crops)
    litert = GenderClassifier(exported, batch_size=8, backend="litert")
    assert np.allclose(litert.predict_p_female(crops), keras_p, atol=1e-4)
    assert litert.provenance()["served_file"] == f"{exported.stem}.fp32.tflite"


def test_int8_stays_close_to_keras(crops: np.ndarray, model_path: Path) -> None:
    keras_p = GenderClassifier(model_path, batch_size=8, backend="keras").predict_p_female(crops)
    int8 = GenderClassifier(model_path, batch_size=8, backend="litert-int8")
    int8_p = int8.predict_p_female(crops)
    assert np.mean((int8_p >= 0.5) == (keras_p >= 0.5)) >= 0.9
    assert np.median(np.abs(int8_p - keras_p)) < 0.05


def test_onnx_float32_built_from_the_archive_matches_keras(
    crops: np.ndarray, model_path: Path
) -> None:
    keras_p = GenderClassifier(model_path, batch_size=8, backend="keras").raw_outputs(crops)
    onnx = GenderClassifier(model_path, batch_size=8, backend="onnx")
    assert np.allclose(onnx.raw_outputs(crops), keras_p, atol=1e-5)
    assert onnx.provenance()["served_file"] == model_path.name
    assert set(onnx.provenance()["packages"]) == {"onnxruntime"}


def test_onnx_int8_from_ranges_the_export_measured_stays_close_to_keras(
    crops: np.ndarray, model_path: Path, data_dir: Path, tmp_path: Path
) -> None:
    from classifier.training.export import export_onnx_int8

    copy = copy_model(model_path, tmp_path)
    ranges = export_onnx_int8(copy, data_dir / "utkface", images=40)
    assert ranges == onnx_ranges_path(copy)
    assert json.loads(ranges.read_text())["model_sha256"] == file_sha256(copy)
    keras_p = GenderClassifier(copy, batch_size=8, backend="keras").raw_outputs(crops)
    int8 = GenderClassifier(copy, batch_size=8, backend="onnx-int8")
    int8_p = int8.raw_outputs(crops)
    assert not np.allclose(int8_p, keras_p, atol=1e-5)  # it really ran quantised
    assert np.mean((int8_p >= 0.5) == (keras_p >= 0.5)) >= 0.95
    assert np.median(np.abs(int8_p - keras_p)) < 0.02
    assert int8.provenance()["served_file"] == ranges.name
    # The shipped model's own ranges serve it as closely.
    shipped = GenderClassifier(model_path, batch_size=8, backend="onnx-int8").raw_outputs(crops)
    assert np.mean((shipped >= 0.5) == (keras_p >= 0.5)) >= 0.95

    record = json.loads(ranges.read_text())
    ranges.write_text(json.dumps({**record, "model_sha256": "0" * 64}))
    with pytest.raises(ArtifactMissingError, match="another version"):
        BACKENDS["onnx-int8"](copy, 0)


def test_auto_prefers_onnx_int8_on_x86_cpus_without_vnni() -> None:
    assert cpu_runtimes("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")[0] == "onnx-int8"
    assert cpu_runtimes("flags\t\t: avx2 avx512f avx512_vnni\n")[0] == "litert-int8"
    assert cpu_runtimes("flags\t\t: avx2 avx_vnni\n")[0] == "litert-int8"
    assert cpu_runtimes("")[0] == "litert-int8"  # not x86: XNNPACK's int8 is at home there
    assert set(cpu_runtimes()) == {"onnx-int8", "litert-int8", "litert"}


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
    full = GenderClassifier(model_path, batch_size=8, backend="keras").predict_p_female(crops)
    assert not np.array_equal(mixed, full)  # it really ran in another precision
    assert np.mean((mixed >= 0.5) == (full >= 0.5)) >= 0.9
    assert np.median(np.abs(mixed - full)) < 0.05
    assert mixed_classifier.version != GenderClassifier(model_path, backend="keras").version


def test_batch_size_and_padding_do_not_change_results(crops: np.ndarray, model_path: Path) -> None:
    big = GenderClassifier(model_path, batch_size=32, backend="litert-int8")
    small = GenderClassifier(model_path, batch_size=3, backend="litert-int8")
    assert np.allclose(big.predict_p_female(crops), small.predict_p_female(crops), atol=1e-6)
    assert small.faces_per_call == 3


class CountingRunner:
    """Wraps a runner, recording the rows of every call."""

    def __init__(self, run) -> None:
        self.run, self.rows = run, []
        self.pad_multiple, self.served_file = run.pad_multiple, run.served_file

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.rows.append(len(batch))
        return self.run(batch)


def test_only_unsure_faces_are_mirrored(crops: np.ndarray, model_path: Path) -> None:
    classifier = GenderClassifier(model_path, batch_size=8, backend="litert-int8")
    raw = classifier.raw_outputs(crops)
    mirror = classifier.raw_outputs(crops[:, :, ::-1])
    confidence = np.maximum(raw, 1 - raw)
    gate = float(np.median(confidence))  # half the faces are unsure
    classifier.metadata = replace(classifier.metadata, flip_average=True, flip_below=gate)
    assert classifier._served is not None
    counting = CountingRunner(classifier._served.run)
    classifier._served = replace(classifier._served, run=counting)
    got = classifier.predict_p_female(crops)
    unsure = confidence < gate
    expected = np.where(unsure, (raw + mirror) / 2, raw)
    assert 0 < unsure.sum() < len(crops)
    assert np.allclose(got, calibrated_p_female(expected, classifier.metadata.temperature))
    # one mirror row per unsure face, padded to a multiple of 8
    assert sum(counting.rows) == len(crops) + -(-unsure.sum() // 8) * 8


def stale_int8(model_path: Path, copy: Path) -> None:
    """Put the shipped int8 file beside `copy`, its record naming another model."""
    artifact, record = litert_paths(copy, "int8")
    shutil.copy(litert_paths(model_path, "int8")[0], artifact)
    record.write_text(json.dumps({"model_sha256": "0" * 64}))


def test_auto_skips_an_int8_file_made_from_another_model(model_path: Path, exported: Path) -> None:
    stale_int8(model_path, exported)
    try:
        with pytest.raises(ArtifactMissingError, match="another version"):
            BACKENDS["litert-int8"](exported, 0)
        used, runner = load_runner("auto", exported)
        assert used == "litert"  # no ONNX int8 ranges beside this copy either
        assert runner.served_file.name == f"{exported.stem}.fp32.tflite"
    finally:
        for path in litert_paths(exported, "int8"):
            path.unlink()


def test_a_model_without_litert_files_falls_back_to_keras_with_one_warning(
    model_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy = copy_model(model_path, tmp_path)
    stale_int8(model_path, copy)
    with caplog.at_level(logging.WARNING, logger="classifier"):
        classifier = GenderClassifier(copy, backend="auto")
        classifier.load()
    assert classifier.backend_used == "keras"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "\n" not in warnings[0]
    assert f"python -m classifier.training.export --model {copy}" in warnings[0]
