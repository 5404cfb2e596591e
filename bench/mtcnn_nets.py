"""MTCNN's three networks alone on other CPU runtimes than the served one, one thread each.

    python bench/mtcnn_nets.py [--repeat 5]

Why: on crowd photos the detector's networks alone cost more than the peer's
whole photo (bench/e2e.py), so a faster runtime for them is the one lever that
keeps the same faces. Each network runs on a typical call of a 416-px crowd
photo (PNet: its largest pyramid level, 262 x 262; RNet: 64 crops; ONet: 16)
on ONNX Runtime fp32 (what serves, detector.mtcnn_onnx), ONNX Runtime int8
(static, per channel, calibrated on the same inputs: speed only), OpenCV's DNN
module on the same graph, and LiteRT (XNNPACK) on the `mtcnn` package's own
Keras network converted by TensorFlow (a bench-only import). Rounds alternate
the runtimes; the medians print as ms per call and as the served one's time /
theirs (above 1: faster).
"""

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow (the LiteRT conversion) quiet
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# name: (ONNX input, NCHW level or NHWC crops shape, the package's network class)
NETS = {
    "pnet": ("level", (1, 3, 262, 262), "PNet"),
    "rnet": ("images", (64, 24, 24, 3), "RNet"),
    "onet": ("images", (16, 48, 48, 3), "ONet"),
}


def _ort(model: bytes) -> Callable[[np.ndarray], object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def _ort_int8(
    model: bytes, name: str, x: np.ndarray, scratch: Path
) -> Callable[[np.ndarray], object]:
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{name: x}])

        def get_next(self) -> dict | None:
            return next(self._batches, None)

    source, target = scratch / "fp32.onnx", scratch / "int8.onnx"
    source.write_bytes(model)
    quantize_static(source, target, Reader(), per_channel=True, weight_type=QuantType.QInt8)
    return _ort(target.read_bytes())


def _opencv(model: bytes) -> Callable[[np.ndarray], object]:
    import cv2

    cv2.setNumThreads(1)
    net = cv2.dnn.readNetFromONNX(np.frombuffer(model, np.uint8))
    outputs = net.getUnconnectedOutLayersNames()

    def run(x: np.ndarray) -> object:
        net.setInput(x)
        return net.forward(outputs)

    return run


def _litert(net: str, shape: tuple[int, ...]) -> Callable[[np.ndarray], object]:
    """The package's Keras network with its weights, converted at a fixed NHWC shape."""
    import importlib

    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter
    from mtcnn.utils.tensorflow import load_weights

    model = getattr(importlib.import_module(f"mtcnn.network.{net}"), NETS[net][2])()
    model.build()
    model.set_weights(load_weights(f"{net}.lz4"))
    nhwc = (shape[0], shape[2], shape[3], shape[1]) if net == "pnet" else shape
    inputs = tf.keras.Input(batch_shape=nhwc)
    fixed = tf.keras.Model(inputs, model(inputs))
    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its signatures
        flatbuffer = tf.lite.TFLiteConverter.from_keras_model(fixed).convert()
    interpreter = Interpreter(model_content=flatbuffer, num_threads=1)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]

    def run(x: np.ndarray) -> None:
        interpreter.set_tensor(index, x.transpose(0, 2, 3, 1) if net == "pnet" else x)
        interpreter.invoke()

    return run


def _ms_per_call(run: Callable[[np.ndarray], object], x: np.ndarray, calls: int = 50) -> float:
    run(x)
    started = time.perf_counter()
    for _ in range(calls):
        run(x)
    return (time.perf_counter() - started) / calls * 1000


def main() -> None:
    from detector.mtcnn_onnx import model_bytes

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'net':6} {'runtime':14} {'ms/call':>9} {'served/it':>10}")
    with tempfile.TemporaryDirectory() as scratch:
        for net, (input_name, shape, _) in NETS.items():
            x = rng.uniform(-1, 1, shape).astype(np.float32)
            model = model_bytes(net)
            runtimes = {
                "onnxruntime": _ort(model),
                "onnxruntime int8": _ort_int8(model, input_name, x, Path(scratch)),
                "opencv dnn": _opencv(model),
                "litert": _litert(net, shape),
            }
            times: dict[str, list[float]] = {name: [] for name in runtimes}
            for round_ in range(args.repeat):
                order = list(runtimes) if round_ % 2 == 0 else list(reversed(runtimes))
                for name in order:
                    times[name].append(_ms_per_call(runtimes[name], x))
            served = statistics.median(times["onnxruntime"])
            for name, found in times.items():
                ms = statistics.median(found)
                print(f"{net:6} {name:14} {ms:9.2f} {served / ms:9.2f}x")


if __name__ == "__main__":
    main()
