"""Layers saved inside models, registered so `.keras` files load by name."""

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="facegender")
class Preprocess(keras.layers.Layer):
    """Maps RGB pixels in [0, 255] to what a backbone was trained on.

    Keeping it inside the model means serving, training and evaluation cannot
    disagree about normalisation.
    - "lite": (x - 127) / 128, EfficientNet-Lite's ImageNet preprocessing.
    - "caffe": RGB -> BGR minus the ImageNet means, ResNet50's `preprocess_input`.
    - "pixels": RGB 0..255 as float, for backbones that normalise inside (the dlib port).
    """

    _CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

    def __init__(self, mode: str = "lite", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in ("lite", "caffe", "pixels"):
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, inputs: Any) -> Any:
        x = keras.ops.cast(inputs, self.compute_dtype)
        if self.mode == "lite":
            return (x - 127.0) / 128.0
        if self.mode == "pixels":
            return x
        bgr = keras.ops.flip(x, axis=-1)
        return bgr - keras.ops.convert_to_tensor(self._CAFFE_MEAN_BGR, dtype=self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}
