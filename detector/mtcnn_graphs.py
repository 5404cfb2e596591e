"""MTCNN's PNet, RNet and ONet as ONNX graphs, built from the `mtcnn` package's weights.

The weights are the package's own (joblib files of the Keras layers'
`get_weights()`); the graphs are built with the `onnx` package, so no model
file enters the repository. Building imports `onnx` (most of a second), so
detector.mtcnn_onnx builds once and caches the serialised graphs; this module
is imported only then.

RNet and ONet take NHWC float32 crops and PNet an NCHW pyramid level, all
normalised as the package does ((x - 127.5) / 128).
Batch, height and width axes are free: ONNX Runtime runs any shape without
tracing. The layers mirror `mtcnn.network`: Keras
"same" max-pooling is SAME_UPPER (the extra pad after), and the dense layers
read the features in Keras's order (a Permute to (W, H, C), then Flatten).
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_OPSET = 17


class _Graph:
    """A small builder: layers chained by name, weights taken in order as initializers."""

    def __init__(self, name: str, weights: Sequence[np.ndarray]) -> None:
        self.name = name
        self._weights = list(weights)
        self._used = 0
        self.inputs: list[onnx.ValueInfoProto] = []
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _input(self, name: str, kind: int, shape: list[str | int]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, kind, shape))
        return name

    def crops(self, size: int) -> str:
        """Input `images`: normalised NHWC crops, as NCHW."""
        images = self._input("images", TensorProto.FLOAT, ["batch", size, size, 3])
        return self._node("Transpose", [images], perm=[0, 3, 1, 2])

    def level(self) -> str:
        """Input `level`: a normalised pyramid level, NCHW (detector.mtcnn_images.level)."""
        return self._input("level", TensorProto.FLOAT, ["batch", 3, "height", "width"])

    def masked(self, x: str) -> str:
        """`x` plus input `mask` (1, 1, height - 2, width - 2): see detector.mtcnn_canvas."""
        mask = self._input("mask", TensorProto.FLOAT, [1, 1, "cells_h", "cells_w"])
        return self._node("Add", [x, mask])

    def _take(self) -> np.ndarray:
        weight = self._weights[self._used]
        self._used += 1
        return np.asarray(weight, dtype=np.float32)

    def _constant(self, value: np.ndarray) -> str:
        name = f"w{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def _node(self, op: str, inputs: list[str], **attributes: Any) -> str:
        self._count += 1
        output = f"{op.lower()}{self._count}"
        self.nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output

    def conv(self, x: str) -> str:
        kernel, bias = self._take(), self._take()  # Keras (kh, kw, in, out)
        weight = self._constant(kernel.transpose(3, 2, 0, 1))
        return self._node("Conv", [x, weight, self._constant(bias)])

    def prelu(self, x: str, spatial: bool = True) -> str:
        """PReLU as x + (alpha - 1) * min(x, 0): with these three plain ops ONNX Runtime runs
        each network 1.4-1.5x faster than with its PRelu, which was half of their time."""
        alpha = self._take()  # (1, 1, C) shared over H and W, or (C,) after a dense layer
        slope = alpha.reshape(-1, 1, 1) if spatial else alpha.reshape(-1)
        negative = self._node("Min", [x, self._constant(np.zeros(()))])
        return self._node("Add", [x, self._node("Mul", [negative, self._constant(slope - 1)])])

    def prelu_blocked(self, x: str) -> str:
        """PReLU over channels as alpha * x + (1 - alpha) * relu(x), the scalings written as
        BatchNormalization: ONNX Runtime runs these in its blocked channel layout (as 1x1
        depthwise convolutions) next to the convolutions, where the plain ops of `prelu`
        need the layout converted around them: ONet 1.25x, RNet 1.05x faster. Not on
        PNet, where it was no faster."""
        alpha = self._take().reshape(-1)
        positive = self._scaled(self._node("Relu", [x]), 1 - alpha)
        return self._node("Add", [self._scaled(x, alpha), positive])

    def _scaled(self, x: str, scale: np.ndarray) -> str:
        """x times a per-channel `scale`, as a BatchNormalization with mean 0 and variance 1."""
        zeros, ones = np.zeros_like(scale), np.ones_like(scale)
        inputs = [x, *(self._constant(v) for v in (scale, zeros, zeros, ones))]
        return self._node("BatchNormalization", inputs, epsilon=0.0)

    def pool(self, x: str, size: int, same: bool) -> str:
        padding = "SAME_UPPER" if same else "VALID"
        return self._node(
            "MaxPool", [x], kernel_shape=[size, size], strides=[2, 2], auto_pad=padding
        )

    def flatten_as_keras(self, x: str) -> str:
        """Keras's Permute((2, 1, 3)) then Flatten, from NCHW: features in (W, H, C) order."""
        return self._node("Flatten", [self._node("Transpose", [x], perm=[0, 3, 2, 1])], axis=1)

    def dense(self, x: str) -> str:
        kernel, bias = self._take(), self._take()  # Keras (in, out)
        return self._node("Gemm", [x, self._constant(kernel), self._constant(bias)])

    def softmax(self, x: str, axis: int) -> str:
        return self._node("Softmax", [x], axis=axis)

    def model(self, outputs: dict[str, str], rank: int) -> onnx.ModelProto:
        if self._used != len(self._weights):
            raise ValueError(f"{self.name}: {len(self._weights) - self._used} weights unused")
        self.nodes += [helper.make_node("Identity", [x], [name]) for name, x in outputs.items()]
        shape = [None] * rank
        values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in outputs]
        graph = helper.make_graph(self.nodes, self.name, self.inputs, values, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
        model.ir_version = 8  # what every ONNX Runtime of the supported range reads
        onnx.checker.check_model(model)
        return model


def pnet_graph(weights: Sequence[np.ndarray], masked: bool = False) -> onnx.ModelProto:
    """On a pyramid level (see `_Graph.level`): `head` (N, 6, H', W'), one cell per 12-px
    window of the level: its 4 box offsets, then its two class logits (not a face, face).
    `masked` adds the input `mask` after the first layer, for levels tiled on a canvas.

    One convolution makes all six; the two-class softmax is left to the caller
    (detector.mtcnn_onnx): as separate convolutions and an ONNX softmax (which
    wants channels last) PNet cost 7% more.
    """
    g = _Graph("pnet", weights)
    first = g.prelu(g.conv(g.level()))
    x = g.pool(g.masked(first) if masked else first, 2, same=True)
    x = g.prelu(g.conv(g.prelu(g.conv(x))))
    offsets_kernel, offsets_bias, scores_kernel, scores_bias = (g._take() for _ in range(4))
    kernel = np.concatenate([offsets_kernel, scores_kernel], axis=-1)
    bias = np.concatenate([offsets_bias, scores_bias])
    head = g._node("Conv", [x, g._constant(kernel.transpose(3, 2, 0, 1)), g._constant(bias)])
    return g.model({"head": head}, rank=4)


def rnet_graph(weights: Sequence[np.ndarray]) -> onnx.ModelProto:
    """On 24x24 crops: `offsets` (N, 4) and `scores` (N, 2)."""
    g = _Graph("rnet", weights)
    x = g.pool(g.prelu_blocked(g.conv(g.crops(24))), 3, same=True)
    x = g.pool(g.prelu_blocked(g.conv(x)), 3, same=False)
    x = g.prelu(g.dense(g.flatten_as_keras(g.prelu_blocked(g.conv(x)))), spatial=False)
    offsets = g.dense(x)
    scores = g.softmax(g.dense(x), axis=-1)
    return g.model({"offsets": offsets, "scores": scores}, rank=2)


def onet_graph(weights: Sequence[np.ndarray]) -> onnx.ModelProto:
    """On 48x48 crops: `offsets` (N, 4), `landmarks` (N, 10: 5 xs, 5 ys) and `scores` (N, 2)."""
    g = _Graph("onet", weights)
    x = g.pool(g.prelu_blocked(g.conv(g.crops(48))), 3, same=True)
    x = g.pool(g.prelu_blocked(g.conv(x)), 3, same=False)
    x = g.pool(g.prelu_blocked(g.conv(x)), 2, same=True)
    x = g.prelu(g.dense(g.flatten_as_keras(g.prelu_blocked(g.conv(x)))), spatial=False)
    offsets = g.dense(x)
    landmarks = g.dense(x)
    scores = g.softmax(g.dense(x), axis=-1)
    return g.model({"offsets": offsets, "landmarks": landmarks, "scores": scores}, rank=2)


GRAPHS = {
    "pnet": pnet_graph,
    "pnet_packed": lambda weights: pnet_graph(weights, masked=True),
    "rnet": rnet_graph,
    "onet": onet_graph,
}


def serialised(name: str, weights_file: Path) -> bytes:
    """The named network's ONNX model, built from its weights file, as bytes."""
    return GRAPHS[name](joblib.load(weights_file)).SerializeToString()
