"""The gender model on LiteRT's XNNPACK CPU runtime (`ai_edge_litert`), without TensorFlow.

Serves the `.tflite` files the export command made beside the model (see
classifier.runtime.artifacts): int8 when present, else float32.
"""

import os
import threading
from pathlib import Path

import numpy as np

from classifier.runtime.artifacts import litert_artifact
from classifier.runtime.quiet import native_stderr_silenced


class LiteRTRunner:
    """One XNNPACK interpreter; a batch of a new length re-plans it once (then cached).

    `pad_multiple` tells GenderClassifier to pad a short last batch only up to a
    multiple of 8 rows: unlike a traced Keras function, a new length costs one
    re-plan, not a retrace, and padding 5 faces to 64 would cost 13x the work.
    """

    pad_multiple = 8

    def __init__(self, model_path: Path, kind: str = "int8", threads: int = 0) -> None:
        """`kind` is "int8" or "fp32"; `threads` 0 means every core this process may use."""
        from ai_edge_litert.interpreter import Interpreter

        self.served_file = litert_artifact(model_path, kind)
        with native_stderr_silenced():  # XNNPACK announces itself at the first allocation
            self._interpreter = Interpreter(
                model_path=str(self.served_file),
                num_threads=threads or len(os.sched_getaffinity(0)),
            )
            self._interpreter.allocate_tensors()
        details = self._interpreter.get_input_details()[0]
        self._input = details["index"]
        self._input_type = np.dtype(details["dtype"])
        self._quantization = details["quantization"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._rows = int(details["shape"][0])
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
