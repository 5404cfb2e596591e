"""The serving path: no TensorFlow, a quiet stderr, and a version naming what made a row."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from classifier import GenderClassifier
from classifier.runtime.artifacts import litert_paths
from classifier.runtime.backends import cpu_runtimes

REPO = Path(__file__).resolve().parents[2]

SERVE = """
import json, sys
import numpy as np
from PIL import Image
from classifier import GenderClassifier

crop = np.asarray(Image.open(sys.argv[1]).convert("RGB").resize((224, 224)))
classifier = GenderClassifier(backend=sys.argv[2])
prediction = classifier.predict(crop[None])[0]
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "jax"))
print(json.dumps({"backend": classifier.backend_used, "heavy": heavy, "gender": prediction.gender}))
"""


def serve(image: Path, backend: str = "auto", **env: str) -> subprocess.CompletedProcess[str]:
    """Load the default classifier and classify one real photo, in a new process."""
    return subprocess.run(
        [sys.executable, "-c", SERVE, str(image), backend],
        cwd=REPO,
        env={**os.environ, "FACEGENDER_VERBOSE": "0", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_serving_on_a_cpu_imports_neither_tensorflow_nor_keras_and_prints_nothing(
    utkface_files: list[Path], tmp_path: Path
) -> None:
    # A fresh cache: the first start builds and quantises the ONNX graph, quietly too.
    done = serve(utkface_files[0], FACEGENDER_CACHE=str(tmp_path))
    result = json.loads(done.stdout)
    assert result["backend"] == cpu_runtimes()[0]
    assert result["gender"] in ("male", "female")
    assert result["heavy"] == []
    assert done.stderr == ""


def test_verbose_lets_the_native_log_lines_through(utkface_files: list[Path]) -> None:
    done = serve(utkface_files[0], "litert-int8", FACEGENDER_VERBOSE="1")
    assert "XNNPACK" in done.stderr  # what the quiet default hides


def model_copy(model_path: Path, folder: Path) -> Path:
    copy = folder / model_path.name
    shutil.copy(model_path, copy)
    shutil.copy(model_path.with_suffix(".json"), copy.with_suffix(".json"))
    for source, target in zip(
        litert_paths(model_path, "int8"), litert_paths(copy, "int8"), strict=True
    ):
        shutil.copy(source, target)
    return copy


def test_the_version_changes_with_the_calibration(model_path: Path, tmp_path: Path) -> None:
    copy = model_copy(model_path, tmp_path)
    before = GenderClassifier(copy, backend="litert-int8").version
    assert before == GenderClassifier(model_path, backend="litert-int8").version  # files, not paths
    metadata = json.loads(copy.with_suffix(".json").read_text())
    metadata["temperature"] += 0.01
    copy.with_suffix(".json").write_text(json.dumps(metadata))
    after = GenderClassifier(copy, backend="litert-int8").version
    assert after != before
    backbone = metadata["backbone"]
    assert after.startswith(f"{backbone}-") and len(after) == len(before)


def test_backends_have_their_own_versions_and_provenance(model_path: Path) -> None:
    int8 = GenderClassifier(model_path, backend="litert-int8")
    keras = GenderClassifier(model_path, backend="keras")
    assert int8.version != keras.version
    provenance = int8.provenance()
    assert provenance["model_version"] == int8.version
    assert provenance["backend"] == "litert-int8"
    assert provenance["model"] == model_path.name
    assert provenance["served_file"] == f"{model_path.stem}.int8.tflite"
    assert set(provenance["packages"]) == {"ai_edge_litert"}
    keras_packages = keras.provenance()["packages"]
    assert "keras" in keras_packages and len(keras_packages) == 2  # Keras and its backend


def test_an_unknown_backend_is_refused(model_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        GenderClassifier(model_path, backend="tflite")
