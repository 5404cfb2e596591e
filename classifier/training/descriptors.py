"""Training the head of a frozen face-descriptor backbone on cached descriptors.

With the dlib port frozen (`--backbone dlib_resnet --unfreeze 0`), every epoch
would run the same network on the same crops. Its descriptors of each crop
and of the crop's mirror image are computed once instead
(classifier.training.teacher) and only the head is fitted on them, the
mirrors serving as augmentation. `dlib_resnet_stages` (the port's pooled last
stages in place of the descriptor) trains the same way on its own cache. The
head model shares its layers with the full model, so fitting it trains the full
model that is saved and served.
"""

from collections.abc import Sequence

import keras
import numpy as np

from classifier.training.backbones import EMBEDDING_BACKBONES
from classifier.training.data import SplitCrops


def uses_cached_descriptors(backbone: str, weights: str, unfreeze: int | None) -> bool:
    """Frozen descriptor backbone with the weights the teacher cache was computed with."""
    return backbone in EMBEDDING_BACKBONES and unfreeze == 0 and weights == "imagenet"


def head_model(model: keras.Model) -> keras.Model:
    """The layers after the backbone (the one nested model), as a model on its descriptors."""
    start = next(i for i, layer in enumerate(model.layers) if isinstance(layer, keras.Model))
    inputs = keras.Input(model.layers[start].output.shape[1:], name="descriptor")
    x = inputs
    for layer in model.layers[start + 1 :]:
        x = layer(x)
    return keras.Model(inputs, x, name=f"{model.name}_head")


def descriptors(
    parts: Sequence[SplitCrops], mirrored: bool = False, backbone: str = "dlib_resnet"
) -> tuple[np.ndarray, np.ndarray]:
    """(`backbone`'s features, labels) of the faces found in `parts`; with their mirrors
    appended if asked."""
    from classifier.training.teacher import load_or_compute

    features, labels = [], []
    for part in parts:
        teacher = load_or_compute(part.cropset, backbone=backbone)
        rows = part.rows[part.found]
        views = [teacher.embeddings[rows]] + ([teacher.mirrored[rows]] if mirrored else [])
        features += views
        labels += [part.labels[part.found]] * len(views)
    return np.concatenate(features).astype(np.float32), np.concatenate(labels)
