"""The runtimes that can serve the model, and which one "auto" picks.

"auto", chosen by bench/classify.py on each kind of machine (bench/results/):
- a GPU that Keras can use: Keras in mixed precision fills it. Whether one may
  be there is first asked without importing anything (an NVIDIA driver with a
  GPU, and JAX or TensorFlow installed), so a CPU machine never loads TensorFlow
  just to find out;
- an x86 CPU without int8 dot products (VNNI): ONNX Runtime int8, whose kernels
  there ran the model 1.7x faster than LiteRT's int8 on one core of a Zen 3
  (AVX2): XNNPACK's int8 is fast only with VNNI;
- otherwise LiteRT on XNNPACK, int8 if its file is beside the model, else float32
  (on Zen 4 and Zen 5, with VNNI, 700-1,500 faces/s on 2 cores);
- a model without any of those files is served by Keras, with a one-line warning
  that says how to export them.
"""

import importlib
import importlib.metadata
import importlib.util
import logging
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from classifier.runtime.artifacts import ArtifactMissingError
from classifier.runtime.keras_runner import KerasRunner, has_gpu, keras_mixed
from classifier.runtime.litert import LiteRTRunner
from classifier.runtime.onnx_runner import OnnxRunner

AUTO = "auto"
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
CPUINFO = Path("/proc/cpuinfo")
log = logging.getLogger(__name__)


class Runner(Protocol):
    """Maps a batch (N, S, S, 3) of RGB 0..255 pixels (uint8 or float32) to N raw outputs."""

    # A short last batch is padded to a multiple of this (0: to the full batch size).
    pad_multiple: int
    served_file: Path  # the weights file actually run

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def _litert_fp32(model_path: Path, threads: int = 0) -> LiteRTRunner:
    return LiteRTRunner(model_path, "fp32", threads)


def _litert_int8(model_path: Path, threads: int = 0) -> LiteRTRunner:
    return LiteRTRunner(model_path, "int8", threads)


def _onnx_fp32(model_path: Path, threads: int = 0) -> OnnxRunner:
    return OnnxRunner(model_path, "fp32", threads)


def _onnx_int8(model_path: Path, threads: int = 0) -> OnnxRunner:
    return OnnxRunner(model_path, "int8", threads)


# Each takes the model path and a thread count (0: the runtime's default; Keras
# follows its backend's process-wide pools instead).
BACKENDS: dict[str, Callable[[Path, int], Runner]] = {
    "keras": KerasRunner,
    "keras-mixed": keras_mixed,
    "litert": _litert_fp32,
    "litert-int8": _litert_int8,
    "onnx": _onnx_fp32,
    "onnx-int8": _onnx_int8,
}
# Module -> distribution, for the versions a runtime reports.
DISTRIBUTIONS = {"ai_edge_litert": "ai-edge-litert"}


def cpu_runtimes(cpuinfo: str | None = None) -> tuple[str, ...]:
    """The CPU backends "auto" tries, in order, for this machine (or a /proc/cpuinfo text)."""
    if cpuinfo is None:
        x86 = platform.machine().lower() in ("x86_64", "amd64")
        cpuinfo = CPUINFO.read_text() if x86 and CPUINFO.is_file() else ""
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    vnni = {"avx512_vnni", "avx_vnni"} & set(flags.split())
    if flags and not vnni:
        return ("onnx-int8", "litert-int8", "litert")
    return ("litert-int8", "litert", "onnx-int8")


def gpu_possible() -> bool:
    """An NVIDIA GPU and a Keras backend that could drive it, seen without importing either."""
    has_device = NVIDIA_GPUS.is_dir() and any(NVIDIA_GPUS.iterdir())
    return (
        has_device
        and importlib.util.find_spec("keras") is not None
        and any(importlib.util.find_spec(name) is not None for name in ("jax", "tensorflow"))
    )


def load_runner(backend: str, model_path: Path, threads: int = 0) -> tuple[str, Runner]:
    """(backend used, runner) for a BACKENDS name or "auto" (see the module docstring)."""
    if backend != AUTO:
        return backend, BACKENDS[backend](model_path, threads)
    if gpu_possible() and has_gpu():
        return "keras-mixed", keras_mixed(model_path, threads)
    reasons: list[Exception] = []
    for name in cpu_runtimes():
        try:
            return name, BACKENDS[name](model_path, threads)
        except (ArtifactMissingError, ImportError) as exc:
            reasons.append(exc)
    log.warning("%s; serving it with Keras instead (slower, loads TensorFlow)", reasons[0])
    return "keras", KerasRunner(model_path, threads)


def runtime_versions(backend_used: str) -> dict[str, str]:
    """Versions of the packages that run `backend_used`: LiteRT, ONNX Runtime, or Keras and
    its backend."""
    if backend_used.startswith("litert"):
        modules = ["ai_edge_litert"]
    elif backend_used.startswith("onnx"):
        modules = ["onnxruntime"]
    else:
        import keras

        modules = ["keras", keras.backend.backend()]
    return {module: _version(module) for module in modules}


def _version(module_name: str) -> str:
    module = importlib.import_module(module_name)
    version = getattr(module, "__version__", None)
    if version is None:
        version = importlib.metadata.version(DISTRIBUTIONS.get(module_name, module_name))
    return str(version)
