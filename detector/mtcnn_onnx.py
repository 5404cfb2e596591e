"""MTCNN's three networks as ONNX Runtime sessions, their graphs cached between starts.

The graphs are built from the `mtcnn` package's weights (detector.mtcnn_graphs)
on the first start, which imports `onnx`, and saved under
$FACEGENDER_CACHE/mtcnn (default ~/.cache/facegender); later starts hand the
saved bytes to ONNX Runtime and never import `onnx`. A file's name carries the
sha256 of the weights and of the builder's source, so new weights or a changed
graph build anew. Importing `mtcnn` would import TensorFlow, so its files are
found without importing it.
"""

import hashlib
import importlib.util
from pathlib import Path

import numpy as np

from detector.cache import cache_root, cached_bytes

_BUILDER = Path(__file__).with_name("mtcnn_graphs.py")


def weights_dir() -> Path:
    """The `mtcnn` package's weight folder, found without running its TensorFlow import."""
    spec = importlib.util.find_spec("mtcnn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the mtcnn package (its weights) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / "weights"


def model_bytes(name: str) -> bytes:
    """The named network's serialised ONNX model: from the cache, else built and cached.
    `pnet_packed` is PNet with a mask input (detector.mtcnn_canvas), from PNet's weights."""
    weights = weights_dir() / f"{name.split('_')[0]}.lz4"
    digest = hashlib.sha256(weights.read_bytes() + _BUILDER.read_bytes()).hexdigest()

    def build() -> bytes:
        from detector.mtcnn_graphs import serialised  # imports onnx: first start only

        return serialised(name, weights)

    return cached_bytes(cache_root() / "mtcnn" / f"{name}-{digest[:24]}.onnx", build)


def face_probability(other: np.ndarray, face: np.ndarray) -> np.ndarray:
    """The face class's two-class softmax, in float32 as TensorFlow computes it for the
    package (shifted by the larger logit). The same formula matters: MTCNN's NMS orders
    boxes by score, and a mathematically equal sigmoid that differs in the last bits
    reordered near ties and moved 3% of faces by over a pixel."""
    top = np.maximum(other, face)
    other, face = np.exp(other - top), np.exp(face - top)
    return face / (other + face)


class MtcnnNetworks:
    """The three networks as ONNX Runtime sessions (CPU); `threads` 0 lets ORT choose.

    ONNX Runtime loads when the networks are made, not when the package is imported."""

    def __init__(self, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: the CLI's output is its own
        # Idle threads sleep instead of spinning: the detector shares the cores with image
        # decoding and the classifier, and spinning threads halve everyone's speed.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # No memory pattern: it would plan (and keep) a buffer for every input shape seen.
        # The arena stays: it reuses the largest call's activations instead of malloc and
        # free per tensor, which leave hundreds of MB of fragments behind over a few calls.
        options.enable_mem_pattern = False
        self._sessions = {
            name: ort.InferenceSession(
                model_bytes(name), options, providers=["CPUExecutionProvider"]
            )
            for name in ("pnet", "pnet_packed", "rnet", "onet")
        }

    def pnet(self, level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, face probability) per 12-px window of a pyramid level (N, 3, H, W),
        normalised (detector.mtcnn_images.level): (N, 4, H', W') and (N, H', W')."""
        (head,) = self._sessions["pnet"].run(None, {"level": level})
        return head[:, :4], face_probability(head[:, 4], head[:, 5])

    def pnet_packed(self, canvas: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`pnet` of levels tiled on a canvas (1, 3, H, W), masked (detector.mtcnn_canvas)."""
        (head,) = self._sessions["pnet_packed"].run(None, {"level": canvas, "mask": mask})
        return head[:, :4], face_probability(head[:, 4], head[:, 5])

    def rnet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(offsets (N, 4), face probability (N,)) for 24x24 crops."""
        offsets, scores = self._sessions["rnet"].run(None, {"images": crops})
        return offsets, scores[:, 1]

    def onet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(offsets (N, 4), landmarks (N, 10: 5 xs, 5 ys), face probability (N,)) for 48x48
        crops."""
        offsets, landmarks, scores = self._sessions["onet"].run(None, {"images": crops})
        return offsets, landmarks, scores[:, 1]
