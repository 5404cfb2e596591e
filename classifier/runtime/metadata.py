"""The metadata JSON that travels next to every `.keras` model.

It is the one source of truth for what a model expects and how to read its
output: backbone, input size, preprocessing, decision threshold, calibration
temperature, mirror gate and
the unsure thresholds. Its `version` names the trained weights only; face
rows record GenderClassifier.version, which also covers calibration and backend.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from classifier.runtime.unsure import UnsureRule

FORMAT = 1


@dataclass(frozen=True)
class ModelMetadata:
    """What `GenderClassifier` needs to turn model output into a gender and a confidence.

    The model's single sigmoid output is P(female). It takes RGB pixels in
    [0, 255]; `preprocessing` names the Preprocess layer inside the model.
    """

    version: str
    backbone: str
    input_size: int = 224
    preprocessing: str = "lite"
    alignment: str = "facegender-224-v1"
    threshold: float = 0.5
    temperature: float = 1.0
    flip_average: bool = False
    # Mirror only the faces the model is unsure of: raw confidence max(p, 1 - p) below this.
    # Confident faces almost never change their answer, so this keeps most of flip-averaging's
    # gain for a fraction of its cost; 1.0 mirrors every face.
    flip_below: float = 1.0
    # The unsure rule (classifier.runtime.unsure): a face is flagged unsure under this
    # calibrated confidence, or with its eyes closer than this many original pixels.
    # Chosen on validation data; 0 (metadata from before these fields) flags nothing.
    unsure_below: float = 0.0
    min_eye_distance: float = 0.0
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT

    @property
    def unsure(self) -> UnsureRule:
        """The model's default unsure rule."""
        return UnsureRule(self.unsure_below, self.min_eye_distance)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelMetadata":
        data = json.loads(text)
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})


def metadata_path(model_path: Path) -> Path:
    """`model.keras` -> `model.json` beside it."""
    return model_path.with_suffix(".json")


def read_metadata(model_path: Path) -> ModelMetadata:
    return ModelMetadata.from_json(metadata_path(model_path).read_text())


def write_metadata(model_path: Path, metadata: ModelMetadata) -> None:
    metadata_path(model_path).write_text(metadata.to_json() + "\n")
