"""Gender prediction for batches of aligned face crops."""

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifier.metadata import ModelMetadata, metadata_path, read_metadata

DEFAULT_MODEL_PATH = Path(__file__).parent / "default_model" / "model.keras"
MODEL_ENV = "FACEGENDER_MODEL"


class ModelNotFoundError(FileNotFoundError):
    """No usable model at the configured path; the message says how to get one."""


@dataclass(frozen=True)
class Prediction:
    """`confidence` is the calibrated probability of the predicted `gender`."""

    gender: str
    confidence: float
    p_female: float


def resolve_model_path(model_path: str | os.PathLike[str] | None = None) -> Path:
    """Explicit path, else $FACEGENDER_MODEL, else the model bundled with the package."""
    chosen = Path(model_path or os.environ.get(MODEL_ENV) or DEFAULT_MODEL_PATH)
    if not chosen.is_file() or not metadata_path(chosen).is_file():
        raise ModelNotFoundError(
            f"no model at {chosen} (a .keras file and its .json metadata beside it). "
            "Pass --model PATH or set FACEGENDER_MODEL to a model made by "
            "`facegender train`, or reinstall facegender to restore the bundled default model."
        )
    return chosen


def calibrated_p_female(raw: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature-scale sigmoid outputs: sigmoid(logit(p) / T)."""
    p = np.clip(np.asarray(raw, dtype=np.float64), 1e-7, 1 - 1e-7)
    logits = np.log(p / (1 - p)) / temperature
    return 1.0 / (1.0 + np.exp(-logits))


def to_predictions(p_female: np.ndarray, threshold: float) -> list[Prediction]:
    predictions = []
    for p in np.asarray(p_female, dtype=np.float64).ravel():
        female = p >= threshold
        predictions.append(
            Prediction(
                gender="female" if female else "male",
                confidence=float(p if female else 1 - p),
                p_female=float(p),
            )
        )
    return predictions


class KerasRunner:
    """Runs the `.keras` model with whichever Keras backend is active (TensorFlow, JAX)."""

    def __init__(self, model_path: Path) -> None:
        import keras

        import classifier.layers  # noqa: F401  (registers Preprocess for loading)

        self._model = keras.saving.load_model(model_path, compile=False)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._model.predict_on_batch(batch)).reshape(-1)


BACKENDS: dict[str, Callable[[Path], Callable[[np.ndarray], np.ndarray]]] = {
    "keras": KerasRunner,
}


class GenderClassifier:
    """Loads a `.keras` model plus its metadata once, lazily, and classifies crops in batches.

    Every call runs the model on fixed-shape batches of `batch_size`, so the
    compiled predict function is traced once per process. `backend` names the
    runtime from BACKENDS.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        batch_size: int = 64,
        backend: str = "keras",
    ):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        self.model_path = resolve_model_path(model_path)
        self.metadata: ModelMetadata = read_metadata(self.model_path)
        self.batch_size = batch_size
        self.backend = backend
        self._run: Callable[[np.ndarray], np.ndarray] | None = None
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        return self.metadata.version

    def load(self) -> None:
        """Load the model now (idempotent); otherwise the first predict does it."""
        with self._lock:
            if self._run is None:
                self._run = BACKENDS[self.backend](self.model_path)

    def predict(self, crops: np.ndarray) -> list[Prediction]:
        """Aligned RGB uint8 crops (N, S, S, 3) -> one Prediction each."""
        return to_predictions(self.predict_p_female(crops), self.metadata.threshold)

    def predict_p_female(self, crops: np.ndarray) -> np.ndarray:
        """Calibrated P(female) for each crop, flip-averaged when the metadata asks for it."""
        if len(crops) == 0:
            return np.zeros((0,), dtype=np.float64)
        raw = self._raw(crops)
        if self.metadata.flip_average:
            raw = (raw + self._raw(crops[:, :, ::-1])) / 2
        return calibrated_p_female(raw, self.metadata.temperature)

    def _raw(self, crops: np.ndarray) -> np.ndarray:
        self.load()
        assert self._run is not None
        size = self.metadata.input_size
        if crops.shape[1:] != (size, size, 3):
            raise ValueError(f"expected crops of shape (N, {size}, {size}, 3), got {crops.shape}")
        outputs = []
        for start in range(0, len(crops), self.batch_size):
            batch = np.asarray(crops[start : start + self.batch_size], dtype=np.float32)
            count = len(batch)
            if count < self.batch_size:
                padding = np.zeros((self.batch_size - count, *batch.shape[1:]), np.float32)
                batch = np.concatenate([batch, padding])
            outputs.append(self._run(batch)[:count])
        return np.concatenate(outputs)
