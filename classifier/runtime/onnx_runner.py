"""The gender model on ONNX Runtime, from the `.keras` file itself: float32 or int8.

The float32 graph is built from the model's archive (classifier.runtime.onnx_graph)
and equals Keras to float rounding. The int8 graph is that graph quantised by
ONNX Runtime (QDQ: uint8 activations, per-channel int8 weights in 7 bits) with
the activation ranges the export command measured on calibration crops
(`<stem>.onnx-int8.json`), so no model binary is shipped for it. The 7-bit
weights keep the products of x86 CPUs without VNNI from saturating: with 8
bits, 5% of the labels flipped against float32; with 7, under 1% (as many as
LiteRT's int8). Both graphs are built on the first start and cached under
$FACEGENDER_CACHE/classifier, named by the digests of what made them.
"""

import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from classifier.runtime.artifacts import (
    ArtifactMissingError,
    file_sha256,
    onnx_int8_record,
    onnx_ranges_path,
)
from detector.cache import cache_root, cached_bytes

_BUILDER = Path(__file__).with_name("onnx_graph.py")
KINDS = ("fp32", "int8")
# How the ranges quantise, at export and at build alike (onnxruntime.quantization's terms).
QUANTISATION = {"per_channel": True, "reduce_range": True}


class OnnxRunner:
    """One ONNX Runtime session; any batch length runs without re-planning.

    Importing this module is cheap: ONNX Runtime loads when a runner is made."""

    pad_multiple = 8

    def __init__(self, model_path: Path, kind: str = "int8", threads: int = 0) -> None:
        """`kind` is "fp32" or "int8"; `threads` 0 means every core this process may use."""
        if kind not in KINDS:
            raise ValueError(f"ONNX kind must be one of {KINDS}, not {kind!r}")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_mem_pattern = False  # no plan kept per batch length
        self._session = ort.InferenceSession(
            cached_graph(model_path, kind), options, providers=["CPUExecutionProvider"]
        )
        self.served_file = model_path if kind == "fp32" else onnx_ranges_path(model_path)
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:
            (output,) = self._session.run(None, {"pixels": pixels})
        return np.asarray(output).reshape(-1)


def cached_graph(model_path: Path, kind: str) -> bytes:
    """The serialised graph of `kind` for this model: from the cache, else built and cached."""
    record = onnx_int8_record(model_path) if kind == "int8" else None
    parts = [file_sha256(model_path), hashlib.sha256(_BUILDER.read_bytes()).hexdigest(), kind]
    if record is not None:
        parts += [
            file_sha256(onnx_ranges_path(model_path)),
            importlib.metadata.version("onnxruntime"),
        ]
    digest = hashlib.sha256("/".join(parts).encode()).hexdigest()

    def build() -> bytes:
        from classifier.runtime.onnx_graph import graph_bytes  # imports onnx: first start only

        graph = graph_bytes(model_path)
        return graph if record is None else quantised(graph, record)

    path = cache_root() / "classifier" / f"{model_path.stem}-{kind}-{digest[:24]}.onnx"
    return cached_bytes(path, build)


def quantised(graph: bytes, record: dict[str, Any]) -> bytes:
    """The float32 `graph` quantised with the record's ranges (no calibration data needed)."""
    if record.get("graph_sha256") != hashlib.sha256(graph).hexdigest():
        raise ArtifactMissingError(
            "the ONNX int8 ranges were measured on another build of the graph; export again"
        )
    with tempfile.TemporaryDirectory(prefix="facegender-onnx-") as folder:
        source, target = Path(folder, "fp32.onnx"), Path(folder, "int8.onnx")
        ranges = Path(folder, "ranges.json")
        source.write_bytes(graph)
        ranges.write_text(json.dumps(record["ranges"]))
        quantise(source, target, ranges, None)
        return target.read_bytes()


def measured_ranges(graph: bytes, crops: np.ndarray) -> dict[str, Any]:
    """The activation ranges of the float32 `graph` over calibration `crops` (N, S, S, 3),
    as ONNX Runtime's calibration cache (what `quantised` reads back)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Crops(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(np.array_split(crops.astype(np.float32), -(-len(crops) // 16)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {"pixels": batch}

    with tempfile.TemporaryDirectory(prefix="facegender-onnx-") as folder:
        source, ranges = Path(folder, "fp32.onnx"), Path(folder, "ranges.json")
        source.write_bytes(graph)
        quantise(source, Path(folder, "int8.onnx"), ranges, Crops())
        return json.loads(ranges.read_text())


def quantise(source: Path, target: Path, ranges: Path, reader: Any) -> None:
    """onnxruntime.quantization.quantize_static with the project's settings, quietly (it
    warns on the root logger about optional pre-processing); `reader` feeds calibration
    crops when the `ranges` file is still to be written."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        quantize_static(
            source,
            target,
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibration_cache_path=ranges,
            **QUANTISATION,
        )
    finally:
        logging.disable(previous)
