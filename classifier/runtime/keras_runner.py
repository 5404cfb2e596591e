"""The `.keras` model on Keras itself (TensorFlow or JAX): the GPU path and the fallback.

Importing this module is cheap; constructing a runner imports Keras and its backend.
"""

from pathlib import Path
from typing import Any

import numpy as np

from classifier.runtime.quiet import import_keras


class KerasRunner:
    """Runs the `.keras` model with whichever Keras backend is active (TensorFlow, JAX).

    `mixed` computes in float16 on a GPU (bfloat16 on a CPU) with float32
    weights and a float32 output layer, Keras's mixed-precision recipe.
    """

    pad_multiple = 0  # fixed-shape batches: one trace serves every call

    def __init__(self, model_path: Path, threads: int = 0, mixed: bool = False) -> None:
        """`threads` is unused: Keras follows its backend's process-wide thread pools."""
        keras = import_keras()
        import classifier.runtime.layers  # noqa: F401  (registers Preprocess for loading)

        model = keras.saving.load_model(model_path, compile=False)
        if mixed:
            model = _mixed_precision(model, "mixed_float16" if has_gpu() else "mixed_bfloat16")
        self._model = model
        self.served_file = model_path

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        return np.asarray(self._model.predict_on_batch(batch), dtype=np.float32).reshape(-1)


def keras_mixed(model_path: Path, threads: int = 0) -> KerasRunner:
    return KerasRunner(model_path, threads, mixed=True)


def _mixed_precision(model: Any, policy: str) -> Any:
    """A copy of a functional `model` computing in `policy`, its last layer kept float32."""
    keras = import_keras()

    last = model.layers[-1].name

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        if layer.name != last and not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    # recursive: the backbone is a model inside the model, and must compute in `policy` too.
    mixed = keras.models.clone_model(model, clone_function=clone, recursive=True)
    mixed.set_weights(model.get_weights())
    return mixed


def has_gpu() -> bool:
    """Whether the active Keras backend sees a GPU (imports Keras and its backend)."""
    keras = import_keras()

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return any(device.platform == "gpu" for device in jax.devices())
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return False  # other Keras backends are not served on a GPU here
