"""Gender classification of aligned face crops, in two halves.

- `classifier.runtime`: serving (what a worker needs), cheap to import;
- `classifier.training`: training, evaluation and LiteRT export (Keras, matplotlib),
  importing from the runtime, never the other way round.

A pure library: arrays in, records out; no queue, no database.
"""

from classifier.runtime import (
    DEFAULT_MODEL_PATH,
    GenderClassifier,
    ModelMetadata,
    ModelNotFoundError,
    Prediction,
    read_metadata,
    resolve_model_path,
    write_metadata,
)

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
