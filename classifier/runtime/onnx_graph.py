"""A `.keras` model as an ONNX graph, read from the archive without Keras or TensorFlow.

The archive holds `config.json` (the functional graph) and `model.weights.h5`,
where Keras stores each layer's variables under the snake-case name of its
class with a per-class counter, in layer order (`conv2d`, `conv2d_1`, ...).
This module walks the graph and writes each layer as ONNX operators, so
ONNX Runtime serves the network in float32, equal to Keras to float rounding
(tests/classifier/test_backends.py). Image tensors stay channels-first (what
ONNX Runtime's convolutions want): each tensor carries the permutation from
its Keras axes to its stored axes, so Keras's Permute layers cost nothing and
transposes appear only where a layer needs another order. A convolution's
BatchNormalization is folded into its weights, and a Dense layer on an image (the
dlib port's fixed crop and resize) multiplies only the rows its kernel reads.
Building imports `onnx`: classifier.runtime.onnx_runner builds once and caches.
Layers outside this set (the EfficientNet-Lite and ResNet50 backbones' depthwise
convolutions, for instance) raise UnsupportedLayerError: LiteRT serves those.
"""

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_OPSET = 17
_CHANNELS_FIRST = (0, 3, 1, 2)  # stored axes of an NHWC Keras image tensor


class UnsupportedLayerError(ValueError):
    """The model holds a layer this builder does not translate."""


@dataclass(frozen=True)
class _Tensor:
    name: str
    perm: tuple[int, ...]  # stored axis i holds Keras axis perm[i]


def graph_bytes(model_path: Path) -> bytes:
    """The serialised ONNX model: input `pixels` (N, S, S, 3) float32 RGB 0..255, output
    `output` (N, 1), the `.keras` model's own output."""
    with zipfile.ZipFile(model_path) as archive:
        config = json.loads(archive.read("config.json"))
        with archive.open("model.weights.h5") as raw, h5py.File(raw) as weights:
            builder = _Builder()
            size = config["config"]["layers"][0]["config"]["batch_shape"][1]
            pixels = _Tensor("pixels", (0, 1, 2, 3))
            out = builder.functional(config, weights["layers"], [pixels])
            builder.nodes.append(helper.make_node("Identity", [out.name], ["output"]))
    graph = helper.make_graph(
        builder.nodes,
        "facegender",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1])],
        builder.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _snake(name: str) -> str:
    """Keras's `to_snake_case` for class names (Conv2D -> conv2d, ReLU -> re_lu)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        name = self._name("c")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(self, op: str, inputs: list[str], **attributes: Any) -> str:
        output = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output

    def stored_as(self, x: _Tensor, perm: tuple[int, ...]) -> str:
        """x's data with its Keras axes stored in the order `perm` (a transpose if needed)."""
        if x.perm == perm:
            return x.name
        return self.node("Transpose", [x.name], perm=[x.perm.index(axis) for axis in perm])

    def functional(self, config: dict, weights: h5py.Group, inputs: list[_Tensor]) -> _Tensor:
        """A Functional model's layers in order; returns its (single) output.

        A BatchNormalization that alone reads a convolution is folded into its weights."""
        tensors: dict[str, _Tensor] = {}
        for name, tensor in zip(_names(config["config"]["input_layers"]), inputs, strict=True):
            tensors[name] = tensor
        layers = _with_groups(config["config"]["layers"], weights)
        by_name = {layer["name"]: (layer, group) for layer, group in layers}
        folded = _folded_normalisations([layer for layer, _ in layers])
        for layer, group in layers:
            if layer["class_name"] == "InputLayer":
                continue
            args = _arguments(layer)
            sources = [tensors[arg["config"]["keras_history"][0]] for arg in args]
            shapes = [arg["config"]["shape"] for arg in args]
            name = layer["name"]
            if layer["class_name"] == "Functional":
                tensors[name] = self.functional(layer, group["layers"], sources)
            elif name in folded.values():
                tensors[name] = sources[0]  # already applied by the convolution before it
            else:
                variables = _variables(group)
                if name in folded:
                    norm, norm_group = by_name[folded[name]]
                    variables = _fold(variables, _variables(norm_group), norm["config"])
                tensors[name] = self.layer(layer, variables, sources, shapes)
        (output,) = _names(config["config"]["output_layers"])
        return tensors[output]

    def layer(
        self, layer: dict, w: list[np.ndarray], xs: list[_Tensor], shapes: list[list[int]]
    ) -> _Tensor:
        kind, c = layer["class_name"], layer["config"]
        x = xs[0]
        if kind in ("Dropout",) or (kind == "Preprocess" and c["mode"] == "pixels"):
            return x
        if kind == "Preprocess" and c["mode"] == "lite":
            shifted = self.node("Sub", [x.name, self.const(127.0)])
            return _Tensor(self.node("Div", [shifted, self.const(128.0)]), x.perm)
        if kind == "Permute":
            keras_order = (0, *c["dims"])  # output axis i is input axis keras_order[i]
            return _Tensor(x.name, tuple(keras_order.index(axis) for axis in x.perm))
        if kind == "Dense":
            return self.dense(x, w, c, shapes[0])
        if kind == "Normalization":
            mean, variance = np.asarray(c["mean"]), np.asarray(c["variance"])
            scale = 1 / np.maximum(np.sqrt(variance), 1e-7)
            centred = self.node("Sub", [x.name, self.along(x, shapes[0], mean)])
            return _Tensor(self.node("Mul", [centred, self.along(x, shapes[0], scale)]), x.perm)
        if kind == "BatchNormalization":
            gamma, beta, mean, variance = w
            channels_first = _CHANNELS_FIRST if len(shapes[0]) == 4 else (0, 1)
            names = [self.stored_as(x, channels_first)]
            names += [self.const(v) for v in (gamma, beta, mean, variance)]
            out = self.node("BatchNormalization", names, epsilon=float(c["epsilon"]))
            return _Tensor(out, channels_first)
        if kind == "ReLU":
            return _Tensor(self.node("Relu", [x.name]), x.perm)
        if kind == "Add":
            first = xs[0]
            names = [self.stored_as(other, first.perm) for other in xs]
            return _Tensor(self.node("Add" if len(names) == 2 else "Sum", names), first.perm)
        if kind == "Concatenate":
            names = [self.stored_as(other, (0, 1)) for other in xs]
            return _Tensor(self.node("Concat", names, axis=c["axis"] % 2), (0, 1))
        if kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
            op = "ReduceMean" if kind == "GlobalAveragePooling2D" else "ReduceMax"
            stored = self.stored_as(x, _CHANNELS_FIRST)
            return _Tensor(self.node(op, [stored], axes=[2, 3], keepdims=0), (0, 1))
        if kind == "ZeroPadding2D":
            (top, bottom), (left, right) = c["padding"]
            before, after = [0, 0, 0, 0], [0, 0, 0, 0]
            for axis, low, high in ((1, top, bottom), (2, left, right)):
                before[x.perm.index(axis)], after[x.perm.index(axis)] = low, high
            return _Tensor(self.node("Pad", [x.name, self.const(before + after, np.int64)]), x.perm)
        if kind == "Conv2D":
            return self.conv(x, w, c, shapes[0])
        if kind in ("MaxPooling2D", "AveragePooling2D") and c["padding"] == "valid":
            op = "MaxPool" if kind == "MaxPooling2D" else "AveragePool"
            stored = self.stored_as(x, _CHANNELS_FIRST)
            pooled = self.node(
                op, [stored], kernel_shape=list(c["pool_size"]), strides=list(c["strides"])
            )
            return _Tensor(pooled, _CHANNELS_FIRST)
        raise UnsupportedLayerError(f"{layer['name']}: {kind} is not translated to ONNX")

    def along(self, x: _Tensor, shape: list[int], values: np.ndarray) -> str:
        """A constant of `values` along Keras's last axis of x, spelt out over the stored
        axes from there on: ONNX Runtime multiplies by a trailing-shaped constant many times
        faster than it broadcasts one along a middle axis."""
        stored = [shape[axis] for axis in x.perm]
        axis = x.perm.index(len(shape) - 1)
        trailing = stored[axis:]
        column = values.reshape([-1] + [1] * (len(trailing) - 1))
        return self.const(np.broadcast_to(column, trailing))

    def dense(self, x: _Tensor, w: list[np.ndarray], c: dict, shape: list[int]) -> _Tensor:
        kernel, rank = w[0], len(shape)
        if rank == 4 and not c["use_bias"] and c["activation"] == "linear":
            return self.contracted(x, kernel, shape)
        stored = self.stored_as(x, tuple(range(rank)))
        out = self.node("MatMul", [stored, self.const(kernel)])
        if c["use_bias"]:
            out = self.node("Add", [out, self.const(w[1])])
        if c["activation"] == "sigmoid":
            out = self.node("Sigmoid", [out])
        elif c["activation"] == "relu":
            out = self.node("Relu", [out])
        elif c["activation"] != "linear":
            raise UnsupportedLayerError(f"Dense activation {c['activation']!r}")
        return _Tensor(out, tuple(range(rank)))

    def contracted(self, x: _Tensor, kernel: np.ndarray, shape: list[int]) -> _Tensor:
        """x @ kernel along Keras's last axis of an image tensor, over the kernel's used rows
        only (a fixed crop and resize reads part of the image)."""
        used = np.flatnonzero((kernel != 0).any(axis=1))
        first, stop = int(used[0]), int(used[-1]) + 1
        last = len(shape) - 1
        position = x.perm.index(last)
        if position == last - 1:  # stored second to last: kernel.T @ x, no transpose needed
            cut = self.slice(x.name, first, stop, position)
            return _Tensor(self.node("MatMul", [self.const(kernel[first:stop].T), cut]), x.perm)
        perm = (*(axis for axis in x.perm if axis != last), last)  # x @ kernel
        cut = self.slice(self.stored_as(x, perm), first, stop, last)
        return _Tensor(self.node("MatMul", [cut, self.const(kernel[first:stop])]), perm)

    def slice(self, x: str, first: int, stop: int, axis: int) -> str:
        ends = [self.const([first], np.int64), self.const([stop], np.int64)]
        return self.node("Slice", [x, *ends, self.const([axis], np.int64)])

    def conv(self, x: _Tensor, w: list[np.ndarray], c: dict, shape: list[int]) -> _Tensor:
        if c["activation"] != "linear" or tuple(c["dilation_rate"]) != (1, 1) or c["groups"] != 1:
            raise UnsupportedLayerError(f"Conv2D {c['name']}: only plain linear convolutions")
        (kh, kw), (sh, sw) = c["kernel_size"], c["strides"]
        pads = [0, 0, 0, 0]
        if c["padding"] == "same":  # TensorFlow's: the odd pixel after
            (top, bottom), (left, right) = _same(shape[1], kh, sh), _same(shape[2], kw, sw)
            pads = [top, left, bottom, right]
        inputs = [self.stored_as(x, _CHANNELS_FIRST), self.const(w[0].transpose(3, 2, 0, 1))]
        if len(w) > 1:  # its bias, or the folded normalisation's
            inputs.append(self.const(w[1]))
        out = self.node("Conv", inputs, kernel_shape=[kh, kw], strides=[sh, sw], pads=pads)
        return _Tensor(out, _CHANNELS_FIRST)


def _same(size: int, kernel: int, stride: int) -> tuple[int, int]:
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _with_groups(layers: list[dict], weights: h5py.Group) -> list[tuple[dict, h5py.Group]]:
    """Each layer with its weights group: Keras names them by class, counted in layer order."""
    seen: dict[str, int] = {}
    paired = []
    for layer in layers:
        base = _snake(layer["class_name"])
        count = seen.get(base, 0)
        seen[base] = count + 1
        paired.append((layer, weights[base if count == 0 else f"{base}_{count}"]))
    return paired


def _variables(group: h5py.Group) -> list[np.ndarray]:
    return [np.asarray(v) for _, v in sorted(group["vars"].items(), key=_index)]


def _arguments(layer: dict) -> list[dict]:
    """The Keras tensors a layer (called once) reads: one, or a list of them."""
    (node,) = layer["inbound_nodes"]
    first = node["args"][0]
    return first if isinstance(first, list) else node["args"]


def _folded_normalisations(layers: list[dict]) -> dict[str, str]:
    """{convolution: the BatchNormalization that is its only reader}."""
    readers: dict[str, list[dict]] = {}
    kinds = {layer["name"]: layer["class_name"] for layer in layers}
    for layer in layers:
        if layer["class_name"] != "InputLayer":
            for arg in _arguments(layer):
                readers.setdefault(arg["config"]["keras_history"][0], []).append(layer)
    return {
        source: found[0]["name"]
        for source, found in readers.items()
        if kinds.get(source) == "Conv2D"
        and len(found) == 1
        and found[0]["class_name"] == "BatchNormalization"
    }


def _fold(conv: list[np.ndarray], norm: list[np.ndarray], config: dict) -> list[np.ndarray]:
    """A convolution's (kernel, bias) with the BatchNormalization after it applied."""
    gamma, beta, mean, variance = norm
    scale = gamma / np.sqrt(variance + config["epsilon"])
    bias = conv[1] if len(conv) > 1 else np.zeros_like(mean)
    return [conv[0] * scale, (bias - mean) * scale + beta]


def _names(layers: list) -> list[str]:
    """Layer names of `input_layers`/`output_layers`: [name, 0, 0] or a list of those."""
    return [layers[0]] if isinstance(layers[0], str) else [layer[0] for layer in layers]


def _index(item: tuple[str, Any]) -> int:
    return int(item[0])
