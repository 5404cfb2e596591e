"""LiteRT (TensorFlow Lite) inference of the gender model on XNNPACK, the fast CPU runtime.

Both artifacts are made from the trained `.keras` model, never trained apart:
- float32: converted on first use and cached under $FACEGENDER_CACHE (default
  ~/.cache/facegender)/litert/, keyed by the model file's sha256, so later
  starts load it in milliseconds. Its outputs match Keras to about 1e-5.
- int8: full-integer quantised, which needs calibration crops, so it is made
  at export, next to the model, by

      python -m classifier.litert [--model PATH] [--data DIR]

  as `<stem>.int8.tflite` plus `<stem>.int8.json` naming the sha256 of the
  model it was made from; a retrained model without a fresh export is served
  in float32 instead of with stale weights.
"""

import argparse
import hashlib
import json
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_IMAGES = 300
CALIBRATION_SEED = 0


class ArtifactMissingError(FileNotFoundError):
    """No int8 artifact made from this exact model; the message says how to make one."""


def model_sha256(model_path: Path) -> str:
    with open(model_path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def cache_dir() -> Path:
    from classifier.crops import cache_home

    return cache_home() / "litert"


def int8_paths(model_path: Path) -> tuple[Path, Path]:
    """(`<stem>.int8.tflite`, `<stem>.int8.json`) beside the model."""
    return (
        model_path.with_name(f"{model_path.stem}.int8.tflite"),
        model_path.with_name(f"{model_path.stem}.int8.json"),
    )


def float32_artifact(model_path: Path) -> Path:
    """The cached float32 conversion of `model_path`, converting it first if needed."""
    target = cache_dir() / f"{model_path.stem}-{model_sha256(model_path)[:16]}.fp32.tflite"
    if not target.is_file():
        _write_atomically(target, convert(model_path))
    return target


def int8_artifact(model_path: Path) -> Path:
    """The exported int8 model made from this exact `model_path`, or ArtifactMissingError."""
    artifact, record = int8_paths(model_path)
    if not artifact.is_file() or not record.is_file():
        raise ArtifactMissingError(
            f"no int8 model beside {model_path}; make one with "
            f"`python -m classifier.litert --model {model_path} --data DIR`"
        )
    made_from = json.loads(record.read_text()).get("model_sha256")
    if made_from != model_sha256(model_path):
        raise ArtifactMissingError(
            f"{artifact} was made from another version of {model_path.name}; export it again "
            f"with `python -m classifier.litert --model {model_path} --data DIR`"
        )
    return artifact


def convert(model_path: Path, calibration: np.ndarray | None = None) -> bytes:
    """The `.keras` model as a LiteRT flatbuffer; full-integer int8 if given calibration crops.

    Needs Keras on its TensorFlow backend. The input is RGB 0..255, float32 (or
    int8 when quantised; the Preprocess layer inside is converted with the rest),
    the output float32 P(female).
    """
    import keras
    import tensorflow as tf

    import classifier.layers  # noqa: F401  (registers Preprocess for loading)

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("LiteRT conversion needs KERAS_BACKEND=tensorflow")
    model = keras.saving.load_model(model_path, compile=False)
    with tempfile.TemporaryDirectory(prefix="facegender-litert-") as folder:
        # Through a SavedModel: the converter then freezes the weights into constants.
        model.export(folder, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        if calibration is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: (
                [np.asarray(crop, np.float32)[None]] for crop in calibration
            )
            # Pixels 0..255 quantise exactly (scale 1, zero point -128): the runner
            # feeds uint8 crops with the top bit flipped, no float conversion.
            converter.inference_input_type = tf.int8
        return converter.convert()


def _write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, target)


def _interpreter_class() -> Any:
    """ai_edge_litert's Interpreter when installed, else the one TensorFlow still bundles."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter


def default_threads() -> int:
    """TensorFlow's configured intra-op threads (FACEGENDER_TF_THREADS), else every CPU."""
    import tensorflow as tf

    configured = tf.config.threading.get_intra_op_parallelism_threads()
    return configured or len(os.sched_getaffinity(0))


class LiteRTRunner:
    """One XNNPACK interpreter; a batch of a new length re-plans it once (then cached).

    `pad_multiple` tells GenderClassifier to pad a short last batch only up to a
    multiple of 8 rows: unlike a traced Keras function, a new length costs one
    re-plan, not a retrace, and padding 5 faces to 64 would cost 13x the work.
    """

    pad_multiple = 8

    def __init__(self, model_path: Path, quantized: bool = False, threads: int | None = None):
        self.artifact = int8_artifact(model_path) if quantized else float32_artifact(model_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            self._interpreter = _interpreter_class()(
                model_path=str(self.artifact), num_threads=threads or default_threads()
            )
        details = self._interpreter.get_input_details()[0]
        self._input = details["index"]
        self._input_type = np.dtype(details["dtype"])
        self._quantization = details["quantization"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._rows = -1
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = self._prepare(batch)
        with self._lock:
            if len(batch) != self._rows:
                self._interpreter.resize_tensor_input(self._input, list(batch.shape))
                self._interpreter.allocate_tensors()
                self._rows = len(batch)
            self._interpreter.set_tensor(self._input, batch)
            self._interpreter.invoke()
            return np.array(self._interpreter.get_tensor(self._output)).reshape(-1)

    def _prepare(self, batch: np.ndarray) -> np.ndarray:
        """Pixels as the interpreter's input type (float32, or quantised int8)."""
        if self._input_type == np.float32:
            return np.ascontiguousarray(batch, dtype=np.float32)
        scale, zero_point = self._quantization
        if batch.dtype == np.uint8 and (scale, zero_point) == (1.0, -128):
            return np.ascontiguousarray((batch ^ 0x80).view(np.int8))  # x - 128, exactly
        info = np.iinfo(self._input_type)
        quantised = np.round(np.asarray(batch, np.float32) / scale) + zero_point
        return np.clip(quantised, info.min, info.max).astype(self._input_type)


def export_int8(
    model_path: Path, data_dir: Path, images: int = CALIBRATION_IMAGES
) -> tuple[Path, dict[str, Any]]:
    """Quantise `model_path`, calibrated on crops of `images` training images: (path, record)."""
    from classifier.training_data import load_splits, require

    splits = load_splits(data_dir)
    require(splits, ("train",), data_dir)
    train = splits["train"]
    rows = train.rows[train.found]
    chosen = np.sort(
        np.random.default_rng(CALIBRATION_SEED).choice(rows, min(images, len(rows)), replace=False)
    )
    calibration = np.asarray(train.cropset.crops[chosen])
    artifact, record_path = int8_paths(model_path)
    _write_atomically(artifact, convert(model_path, calibration))
    record = {
        "model": model_path.name,
        "model_sha256": model_sha256(model_path),
        "quantization": "full-integer int8; int8 input (pixel - 128), float32 output",
        "calibration": {
            "data": data_dir.resolve().name,
            "split": "train",
            "images": len(chosen),
            "seed": CALIBRATION_SEED,
        },
    }
    _write_atomically(record_path, (json.dumps(record, indent=2) + "\n").encode())
    return artifact, record


def main() -> None:
    from classifier.inference import resolve_model_path

    parser = argparse.ArgumentParser(description="Export the int8 LiteRT model beside a model")
    parser.add_argument("--model", default=None, help="default: $FACEGENDER_MODEL, else bundled")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("FACEGENDER_DATA", "../shared/data")) / "utkface",
        help="a labelled data set whose training split calibrates (default: UTKFace)",
    )
    parser.add_argument("--images", type=int, default=CALIBRATION_IMAGES)
    args = parser.parse_args()
    artifact, record = export_int8(resolve_model_path(args.model), args.data, args.images)
    print(f"wrote {artifact} ({artifact.stat().st_size:,} bytes): {json.dumps(record)}")


if __name__ == "__main__":
    main()
