"""Export a trained `.keras` model to the LiteRT files the CPU runtime serves.

    python -m classifier.training.export [--model PATH] [--data DIR] [--images N] [--skip-int8]

writes beside the model (see classifier.runtime.artifacts):
- `<stem>.fp32.tflite`: float32, outputs equal to Keras to about 1e-5;
- `<stem>.int8.tflite`: full-integer int8, calibrated on crops of `--images`
  training images of `--data` (default: UTKFace under $FACEGENDER_DATA);
each with its `<stem>.<kind>.json` record naming the sha256 of the model it was
made from; and `<stem>.onnx-int8.json`, the activation ranges over the same crops
from which ONNX Runtime quantises its own graph of the model (no TensorFlow
needed for that one). The LiteRT files need Keras on TensorFlow (the
converter); serving them does not.
"""

import argparse
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from classifier.runtime.artifacts import (
    file_sha256,
    litert_paths,
    onnx_ranges_path,
    resolve_model_path,
)
from classifier.runtime.onnx_graph import UnsupportedLayerError
from detector.cache import write_atomically

CALIBRATION_IMAGES = 300
CALIBRATION_SEED = 0


def convert(model_path: Path, calibration: np.ndarray | None = None) -> bytes:
    """The `.keras` model as a LiteRT flatbuffer; full-integer int8 if given calibration crops.

    The input is RGB 0..255, float32 (or int8 when quantised; the Preprocess
    layer inside is converted with the rest), the output float32 P(female).
    """
    import keras
    import tensorflow as tf

    import classifier.runtime.layers  # noqa: F401  (registers Preprocess for loading)

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
        return bytes(converter.convert())


def export_fp32(model_path: Path) -> tuple[Path, dict[str, Any]]:
    """Write `<stem>.fp32.tflite` and its record: (path, record)."""
    return _write(model_path, "fp32", convert(model_path), {"format": "float32"})


def calibration_crops(data_dir: Path, images: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Aligned crops of `images` seeded training images of `data_dir` (N, S, S, 3) uint8.

    The images are drawn first and only their faces detected, so an export
    needs seconds, not a crop cache of the whole data set.
    """
    from classifier.training.crops import load_or_build
    from classifier.training.data import assign_splits
    from classifier.training.datasets import DatasetLayoutError, discover

    train = assign_splits(discover(data_dir))["train"]
    if not train:
        raise DatasetLayoutError(f"{data_dir}: no images in the train split")
    picked = np.random.default_rng(CALIBRATION_SEED).choice(
        len(train), min(images, len(train)), replace=False
    )
    cropset = load_or_build([train[i].path for i in np.sort(picked)])
    return np.asarray(cropset.crops[cropset.found])


def export_int8(
    model_path: Path, data_dir: Path, images: int = CALIBRATION_IMAGES
) -> tuple[Path, dict[str, Any]]:
    """Quantise `model_path`, calibrated on `calibration_crops`: (path, record)."""
    calibration = calibration_crops(data_dir, images)
    details = {
        "quantization": "full-integer int8; int8 input (pixel - 128), float32 output",
        "calibration": _calibration(data_dir, len(calibration)),
    }
    return _write(model_path, "int8", convert(model_path, calibration), details)


def export_onnx_int8(model_path: Path, data_dir: Path, images: int = CALIBRATION_IMAGES) -> Path:
    """Write `<stem>.onnx-int8.json`: ONNX Runtime's int8 ranges over the calibration crops
    of `export_int8` (the same images). Needs no TensorFlow."""
    from classifier.runtime.onnx_graph import graph_bytes
    from classifier.runtime.onnx_runner import QUANTISATION, measured_ranges

    calibration = calibration_crops(data_dir, images)
    graph = graph_bytes(model_path)
    record = {
        "model": model_path.name,
        "model_sha256": file_sha256(model_path),
        "graph_sha256": hashlib.sha256(graph).hexdigest(),
        "quantization": {"format": "QDQ uint8 activations, int8 weights", **QUANTISATION},
        "calibration": _calibration(data_dir, len(calibration)),
        "ranges": measured_ranges(graph, calibration),
    }
    path = onnx_ranges_path(model_path)
    write_atomically(path, (json.dumps(record) + "\n").encode())
    return path


def _calibration(data_dir: Path, crops: int) -> dict[str, Any]:
    return {
        "data": data_dir.resolve().name,
        "split": "train",
        "images": crops,
        "seed": CALIBRATION_SEED,
    }


def _write(
    model_path: Path, kind: str, flatbuffer: bytes, details: dict[str, Any]
) -> tuple[Path, dict[str, Any]]:
    """The artifact, then its record (each replaced atomically): a reader never sees a
    record naming the new model beside an old artifact."""
    artifact, record_path = litert_paths(model_path, kind)
    record = {"model": model_path.name, "model_sha256": file_sha256(model_path), **details}
    write_atomically(artifact, flatbuffer)
    write_atomically(record_path, (json.dumps(record, indent=2) + "\n").encode())
    return artifact, record


def main() -> None:
    parser = argparse.ArgumentParser(description="Export the LiteRT files beside a model")
    parser.add_argument("--model", default=None, help="default: $FACEGENDER_MODEL, else bundled")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("FACEGENDER_DATA", "../shared/data")) / "utkface",
        help="a labelled data set whose training split calibrates int8 (default: UTKFace)",
    )
    parser.add_argument("--images", type=int, default=CALIBRATION_IMAGES)
    parser.add_argument("--skip-int8", action="store_true", help="write only the float32 file")
    parser.add_argument(
        "--onnx-only", action="store_true", help="write only the ONNX int8 ranges (no TensorFlow)"
    )
    args = parser.parse_args()
    model_path = resolve_model_path(args.model)
    if not args.onnx_only:
        exports = [export_fp32(model_path)]
        if not args.skip_int8:
            exports.append(export_int8(model_path, args.data, args.images))
        for artifact, record in exports:
            print(f"wrote {artifact} ({artifact.stat().st_size:,} bytes): {json.dumps(record)}")
    if not args.skip_int8:
        try:
            ranges = export_onnx_int8(model_path, args.data, args.images)
            print(f"wrote {ranges} ({ranges.stat().st_size:,} bytes)")
        except UnsupportedLayerError as exc:
            print(f"no ONNX int8 ranges: {exc} (LiteRT serves this model)")


if __name__ == "__main__":
    main()
