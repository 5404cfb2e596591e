"""Serving: classify aligned face crops with a trained model (LiteRT on a CPU, Keras on a GPU).

Importing it is cheap: no TensorFlow, Keras or matplotlib until a Keras backend is loaded.
"""

from classifier.runtime.artifacts import DEFAULT_MODEL_PATH, ModelNotFoundError, resolve_model_path
from classifier.runtime.calibration import Prediction
from classifier.runtime.gender_classifier import GenderClassifier
from classifier.runtime.metadata import ModelMetadata, read_metadata, write_metadata

__all__ = [
    "DEFAULT_MODEL_PATH",
    "GenderClassifier",
    "ModelMetadata",
    "ModelNotFoundError",
    "Prediction",
    "read_metadata",
    "resolve_model_path",
    "write_metadata",
]
