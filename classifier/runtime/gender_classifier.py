"""Gender prediction for batches of aligned face crops."""

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifier.metadata import ModelMetadata, metadata_path, read_metadata

DEFAULT_MODEL_PATH = Path(__file__).parent / "default_model" / "model.keras"
MODEL_ENV = "FACEGENDER_MODEL"
log = logging.getLogger(__name__)


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


# A runner maps a batch (N, S, S, 3) of RGB 0..255 pixels (uint8, or float32 from other
# callers) to the model's N raw outputs.
Runner = Callable[[np.ndarray], np.ndarray]


class KerasRunner:
    """Runs the `.keras` model with whichever Keras backend is active (TensorFlow, JAX).

    `mixed` computes in float16 on a GPU (bfloat16 on a CPU) with float32
    weights and a float32 output layer, Keras's mixed-precision recipe.
    """

    pad_multiple = 0  # fixed-shape batches: one trace serves every call

    def __init__(self, model_path: Path, threads: int = 0, mixed: bool = False) -> None:
        import keras

        import classifier.layers  # noqa: F401  (registers Preprocess for loading)

        model = keras.saving.load_model(model_path, compile=False)
        if mixed:
            model = _mixed_precision(model, "mixed_float16" if _has_gpu() else "mixed_bfloat16")
        self._model = model

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        return np.asarray(self._model.predict_on_batch(batch), dtype=np.float32).reshape(-1)


def _mixed_precision(model, policy: str):
    """A copy of a functional `model` computing in `policy`, its last layer kept float32."""
    import keras

    last = model.layers[-1].name

    def clone(layer):
        config = layer.get_config()
        if layer.name != last and not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    # recursive: the backbone is a model inside the model, and must compute in `policy` too.
    mixed = keras.models.clone_model(model, clone_function=clone, recursive=True)
    mixed.set_weights(model.get_weights())
    return mixed


def _has_gpu() -> bool:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return any(device.platform == "gpu" for device in jax.devices())
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _keras_mixed(model_path: Path, threads: int = 0) -> KerasRunner:
    return KerasRunner(model_path, threads, mixed=True)


def _litert(model_path: Path, threads: int = 0) -> Runner:
    from classifier.litert import LiteRTRunner

    return LiteRTRunner(model_path, threads=threads)


def _litert_int8(model_path: Path, threads: int = 0) -> Runner:
    from classifier.litert import LiteRTRunner

    return LiteRTRunner(model_path, quantized=True, threads=threads)


# Each takes the model path and a thread count (0: the runtime's default; Keras
# follows TensorFlow's process-wide pools instead).
BACKENDS: dict[str, Callable[[Path, int], Runner]] = {
    "keras": KerasRunner,
    "keras-mixed": _keras_mixed,
    "litert": _litert,
    "litert-int8": _litert_int8,
}
AUTO = "auto"
# What "auto" tries, in order, chosen by bench/classify.py on each kind of machine
# (bench/results/): on a GPU, Keras in mixed precision fills it; on a CPU, XNNPACK
# int8 is the fastest, then XNNPACK float32; Keras is the fallback that always loads.
AUTO_GPU = ("keras-mixed", "keras")
AUTO_CPU = ("litert-int8", "litert", "keras")
# Rows per model call when not given: bench/results/classify_h100_jax.txt shows a
# GPU still gaining at 256 and more; on 2 CPU cores LiteRT is flat from 8 rows on.
GPU_BATCH, CPU_BATCH = 256, 32


def load_runner(backend: str, model_path: Path, threads: int = 0) -> tuple[str, Runner]:
    """(backend used, runner) for a BACKENDS name or "auto", which takes the first that loads."""
    if backend != AUTO:
        return backend, BACKENDS[backend](model_path, threads)
    candidates = AUTO_GPU if _has_gpu() else AUTO_CPU
    for name in candidates:
        try:
            return name, BACKENDS[name](model_path, threads)
        except Exception as exc:  # an artifact or runtime this machine lacks: try the next
            if name == candidates[-1]:
                raise
            log.warning("backend %s unavailable (%s); trying the next", name, exc)
    raise AssertionError("unreachable")


class GenderClassifier:
    """Loads a `.keras` model plus its metadata once, lazily, and classifies crops in batches.

    `backend` names the runtime from BACKENDS, or "auto" for the fastest one this
    machine can load (what the worker serves with); `backend_used` says which,
    once loaded. Every model call gets `batch_size` rows (when the metadata asks
    for flip-averaging, the mirror images of the unsure faces follow in calls of
    their own), so a traced Keras function is traced once per process; runtimes
    that re-plan cheaply (LiteRT) get a short last batch padded only to a
    multiple of their `pad_multiple`.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        batch_size: int = 64,
        backend: str = "keras",
        threads: int = 0,
    ):
        """`batch_size` 0 means the backend's own: GPU_BATCH on a GPU, else CPU_BATCH.

        `threads` is for runtimes with their own thread pool (LiteRT); 0 means all cores.
        """
        if backend != AUTO and backend not in BACKENDS:
            choices = ", ".join([AUTO, *BACKENDS])
            raise ValueError(f"unknown backend {backend!r}; choose from {choices}")
        self.model_path = resolve_model_path(model_path)
        self.metadata: ModelMetadata = read_metadata(self.model_path)
        self.batch_size = batch_size
        self.backend = backend
        self.threads = threads
        self.backend_used: str | None = None
        self._run: Runner | None = None
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        return self.metadata.version

    def load(self) -> None:
        """Load the model now (idempotent); otherwise the first predict does it."""
        with self._lock:
            if self._run is None:
                self.backend_used, self._run = load_runner(
                    self.backend, self.model_path, self.threads
                )
                if not self.batch_size:
                    on_gpu = self.backend_used.startswith("keras") and _has_gpu()
                    self.batch_size = GPU_BATCH if on_gpu else CPU_BATCH
                log.info("classifier backend: %s, batch %d", self.backend_used, self.batch_size)

    @property
    def faces_per_call(self) -> int:
        """Faces per model call (mirror images of unsure faces get calls of their own)."""
        self.load()
        return self.batch_size

    def predict(self, crops: np.ndarray) -> list[Prediction]:
        """Aligned RGB uint8 crops (N, S, S, 3) -> one Prediction each."""
        return to_predictions(self.predict_p_female(crops), self.metadata.threshold)

    def predict_p_female(self, crops: np.ndarray) -> np.ndarray:
        """Calibrated P(female) for each crop, flip-averaged where the metadata asks for it."""
        if len(crops) == 0:
            return np.zeros((0,), dtype=np.float64)
        size = self.metadata.input_size
        if crops.shape[1:] != (size, size, 3):
            raise ValueError(f"expected crops of shape (N, {size}, {size}, 3), got {crops.shape}")
        raw = self.raw_outputs(crops)
        if self.metadata.flip_average:
            unsure = np.flatnonzero(needs_mirror(raw, self.metadata.flip_below))
            if len(unsure):
                mirrored = np.asarray(crops[unsure])[:, :, ::-1]
                raw[unsure] = (raw[unsure] + self.raw_outputs(mirrored)) / 2
        return calibrated_p_female(raw, self.metadata.temperature)

    def raw_outputs(self, crops: np.ndarray) -> np.ndarray:
        """Model output per crop, in calls of `batch_size` rows; no flip, no calibration."""
        self.load()
        assert self._run is not None
        rows = self.batch_size
        multiple = getattr(self._run, "pad_multiple", 0)
        outputs = []
        for start in range(0, len(crops), rows):
            batch = np.asarray(crops[start : start + rows])
            if batch.dtype != np.uint8:
                batch = batch.astype(np.float32)
            count = len(batch)
            wanted = min(rows, -(-count // multiple) * multiple) if multiple else rows
            if count < wanted:
                padding = np.zeros((wanted - count, *batch.shape[1:]), batch.dtype)
                batch = np.concatenate([batch, padding])
            outputs.append(self._run(batch)[:count])
        return np.concatenate(outputs).astype(np.float64)


def needs_mirror(raw: np.ndarray, flip_below: float) -> np.ndarray:
    """Which raw outputs are unsure enough to be averaged with their mirror image."""
    raw = np.asarray(raw)
    if flip_below >= 1:
        return np.ones(raw.shape, dtype=bool)
    return np.maximum(raw, 1 - raw) < flip_below
