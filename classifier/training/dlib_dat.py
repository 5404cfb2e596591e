"""Read a dlib DNN `.dat` file (dlib's own `serialize` format) into numpy arrays, without dlib.

dlib writes a network as nested templates: the loss layer, then one version
number per wrapper from the outermost layer inwards (`add_layer`, `add_tag_layer`,
`add_skip_layer`), then the input layer, then each computational layer's details
from the input outwards, each followed by its wrapper's bookkeeping (flags and
scratch tensors, empty in a saved model). Which wrapper is which is a property
of the C++ type, not of the file, so the caller passes the network as a flat
list of `Op`s (input to output) and the reader checks every layer against it.

Encodings (dlib/serialize.h, dlib/dnn/tensor.h): integers are one byte holding
the byte count (bit 7 = negative) then little-endian magnitude bytes; floats and
doubles are an integer mantissa and exponent (value = m * 2**e); bools are the
characters '0'/'1'; strings are a length then bytes; tensors are version, the
four dimensions, then raw little-endian float32 (version 2) or dlib floats (1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from os import PathLike

import numpy as np

__all__ = ["DlibFormatError", "DlibNet", "Op", "read_dlib_net"]

_FLOAT_SPECIAL = {32000: math.inf, 32001: -math.inf, 32002: math.nan}


class DlibFormatError(ValueError):
    """The file is not the network described, or not a dlib serialization at all."""


@dataclass(frozen=True)
class Op:
    """One entry of a dlib network, input to output.

    `kind` is a computational layer ("con", "affine", "relu", "max_pool", "avg_pool",
    "add_prev", "fc") or a wrapper without details ("tag", "skip"). `args` holds the
    template arguments the file must agree with: con (filters, rows, cols, stride_y,
    stride_x), max_pool/avg_pool (rows, cols, stride_y, stride_x; 0 = whole input),
    fc (outputs,), tag/skip/add_prev (tag id,).
    """

    kind: str
    args: tuple[int, ...] = ()


@dataclass
class DlibNet:
    """What the file holds: the input layer's settings and each Op's parameters."""

    input_mean: tuple[float, float, float]
    input_size: tuple[int, int]
    loss: str
    ops: list[Op]
    params: list[dict[str, np.ndarray]] = field(default_factory=list)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self._data):
            raise DlibFormatError("file ends early")
        chunk = self._data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int_(self) -> int:
        head = self._take(1)[0]
        size = head & 0x0F
        if size > 8 or head & 0x70:
            raise DlibFormatError(f"bad integer header 0x{head:02x} at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if head & 0x80 else value

    def float_(self) -> float:
        mantissa, exponent = self.int_(), self.int_()
        if exponent in _FLOAT_SPECIAL:
            return _FLOAT_SPECIAL[exponent]
        return math.ldexp(mantissa, exponent)

    def bool_(self) -> bool:
        ch = self._take(1)
        if ch not in (b"0", b"1"):
            raise DlibFormatError(f"bad bool at byte {self.pos - 1}")
        return ch == b"1"

    def string(self) -> str:
        return self._take(self.int_()).decode("latin-1")

    def version(self, allowed: range, what: str) -> int:
        version = self.int_()
        if version not in allowed:
            raise DlibFormatError(f"{what}: unexpected version {version} at byte {self.pos}")
        return version

    def tensor(self) -> np.ndarray:
        version = self.version(range(1, 3), "tensor")
        shape = tuple(self.int_() for _ in range(4))
        count = math.prod(shape)
        if version == 2:
            values = np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32)
        else:
            values = np.array([self.float_() for _ in range(count)], dtype=np.float32)
        return values.reshape(shape)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        self.version(range(1, 2), "alias_tensor")
        n, k, nr, nc = (self.int_() for _ in range(4))
        return n, k, nr, nc

    def at_end(self) -> bool:
        return self.pos == len(self._data)


def _expect(name: str, found: object, wanted: object) -> None:
    if found != wanted:
        raise DlibFormatError(f"{name}: file has {found}, network wants {wanted}")


def _read_details(r: _Reader, op: Op) -> dict[str, np.ndarray]:
    """One computational layer's details; returns its parameters as arrays."""
    name = r.string()
    if op.kind == "con":
        _expect("con version", name, "con_4")
        params = r.tensor().reshape(-1)
        filters, rows, cols, stride_y, stride_x = (r.int_() for _ in range(5))
        pad_y, pad_x = r.int_(), r.int_()
        _expect("con", (filters, rows, cols, stride_y, stride_x), op.args)
        fshape, _ = r.alias_tensor(), r.alias_tensor()
        for _ in range(4):  # learning-rate and weight-decay multipliers
            r.float_()
        size = math.prod(fshape)
        _expect("con parameter count", params.size, size + filters)
        return {
            "kernel": params[:size].reshape(fshape),  # (filters, channels, rows, cols)
            "bias": params[size:],
            "padding": np.array([pad_y, pad_x]),
        }
    if op.kind == "affine":
        _expect("affine version", name, "affine_")
        params = r.tensor().reshape(-1)
        gshape, _ = r.alias_tensor(), r.alias_tensor()
        _expect("affine mode (0 = per channel)", r.int_(), 0)
        n = math.prod(gshape)
        _expect("affine parameter count", params.size, 2 * n)
        return {"gamma": params[:n], "beta": params[n:]}
    if op.kind in ("max_pool", "avg_pool"):
        _expect(f"{op.kind} version", name, f"{op.kind}_2")
        rows, cols, stride_y, stride_x, pad_y, pad_x = (r.int_() for _ in range(6))
        _expect(op.kind, (rows, cols, stride_y, stride_x), op.args)
        return {"padding": np.array([pad_y, pad_x])}
    if op.kind == "relu":
        _expect("relu version", name, "relu_")
        return {}
    if op.kind == "add_prev":
        _expect("add_prev version", name, "add_prev_")
        return {}
    if op.kind == "fc":
        _expect("fc version", name, "fc_2")
        outputs, inputs = r.int_(), r.int_()
        _expect("fc outputs", outputs, op.args[0])
        params = r.tensor().reshape(-1)
        r.alias_tensor()
        r.alias_tensor()
        _expect("fc bias mode (1 = no bias)", r.int_(), 1)
        for _ in range(4):
            r.float_()
        _expect("fc parameter count", params.size, inputs * outputs)
        return {"kernel": params.reshape(inputs, outputs)}
    raise DlibFormatError(f"layer kind {op.kind!r} is not supported")


def _skip_bookkeeping(r: _Reader, version: int, bottom: bool) -> None:
    """The flags and scratch tensors an add_layer writes after its details."""
    for _ in range(3):
        r.bool_()
    tensors = 3 if bottom or version >= 2 else 2  # x_grad, cached_output, grad/params_grad
    for _ in range(tensors):
        r.tensor()
    if bottom and version >= 3:
        r.int_()  # sample expansion factor


def read_dlib_net(path: str | PathLike[str], ops: list[Op]) -> DlibNet:
    """Reads a `loss_metric` network whose layers (input to output) are `ops`.

    Raises DlibFormatError where the file disagrees with `ops` in any layer kind,
    shape, stride or padding, or has bytes left over.
    """
    with open(path, "rb") as f:
        r = _Reader(f.read())
    r.version(range(1, 2), "add_loss_layer")
    loss = r.string()
    if loss not in ("loss_metric_", "loss_metric_2"):
        raise DlibFormatError(f"loss {loss!r} is not loss_metric")
    if loss == "loss_metric_2":
        r.float_()  # margin
        r.float_()  # distance threshold

    # Wrapper versions, outermost first: the last op is the outermost layer.
    versions: list[int] = []
    bottom = 0  # the first computational op sits directly on the input layer
    for i in range(len(ops) - 1, -1, -1):
        if ops[i].kind in ("tag", "skip"):
            versions.append(r.version(range(1, 2), ops[i].kind))
        elif i == bottom:
            versions.append(r.version(range(2, 4), "add_layer on the input"))
        else:
            versions.append(r.version(range(1, 3), "add_layer"))
    versions.reverse()
    if ops[bottom].kind in ("tag", "skip"):
        raise DlibFormatError("the first op must be a computational layer")

    _expect("input layer", r.string(), "input_rgb_image_sized")
    mean = (r.float_(), r.float_(), r.float_())
    size = (r.int_(), r.int_())

    net = DlibNet(input_mean=mean, input_size=size, loss=loss, ops=list(ops))
    for i, op in enumerate(ops):
        if op.kind in ("tag", "skip"):
            net.params.append({})
            continue
        net.params.append(_read_details(r, op))
        _skip_bookkeeping(r, versions[i], bottom=i == bottom)
    if not r.at_end():
        raise DlibFormatError(f"{r.pos} of {len(r._data)} bytes read: the network is longer")
    return net
