"""Gender classification of aligned face crops, plus the code that trains and evaluates it.

A pure library: arrays in, records out; no queue, no database.
"""

from classifier.inference import (
    DEFAULT_MODEL_PATH,
    GenderClassifier,
    ModelNotFoundError,
    Prediction,
    resolve_model_path,
)
from classifier.metadata import ModelMetadata, read_metadata, write_metadata

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
