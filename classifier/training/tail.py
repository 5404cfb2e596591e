"""Fine-tuning the last residual stages of the dlib port, with the head, on cached activations.

Training the whole port per augmented sample is too slow for a CPU, but its last
stages work on 8x8 and 4x4 maps and cost little. So the port runs once per crop
(and per mirror and extra augmented view) up to the cut, the output of the stage
before the trainable ones, and those activations are cached as float16 under
`$FACEGENDER_CACHE/teacher`; training then runs only the tail (the last stages,
the pooling and the head) on them. The tail model shares its layers with the
full model, so training it trains the model that is saved, exported and served:
same architecture, same size, same speed.

Measured from the head-only default (UTKFace val 93.7%, minors 75.5): the last
two stages, 3e-5, 5 epochs, crop + mirror + 2 extra views: val 93.9% (minors
77.2, Asian 90.4; served test 93.6%, minors 77.3). The last stage alone at
1e-4 or without extra views, a head refitted on the extra views alone, and
minors/Asian weighted 1.5x all stayed at 93.4-93.8%. From that fine-tuned
model (val 93.88%, minors 77.2), 4 strong_view()s per crop at 1e-5 (wd 0.05,
ages 0-12 weighted 1.5x): val 93.97% after one epoch (loss 0.195 -> 0.174),
93.72% after two (over-fitting again); ages 0-12 weighted 3x, one epoch: 93.63%
(minors 76.7). The mean of the start and the two epochs' weights: val 94.46%
served (minors 79.7, loss 0.175 -> 0.167), yet served int8 test 93.5% (minors
76.8, Asian 89.6) against the default's 93.6 (77.3, 90.0): not kept. The last
three stages (cut 17x17x64, 2 strong views, 1e-5): val 93.84 / 93.66% after
epochs 1 / 2 (minors 76.6 / 76.2, train loss 0.085): more capacity over-fits.

    model = keras.saving.load_model("classifier/default_model/model.keras")
    cut = cut_layer(model, stages=2)                  # e.g. "dlib089_relu", 8x8x128
    views = load_or_compute(split.cropset, model, cut)  # CutActivations, rows as crops
    tail = tail_model(model, cut, trainable_stages=1)   # cut activations -> P(female)
    log = fine_tune_tail(model, TailConfig(), [train, celebahq], val)  # all of it, in place
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import keras
import numpy as np

from classifier.training.augmentation import Augmentation
from classifier.training.crops import CropSet
from classifier.training.data import SplitCrops
from classifier.training.dlib_resnet import face_recognition_model_path, stage_ends
from classifier.training.teacher import cache_key, teacher_root

__all__ = [
    "VIEWS",
    "CutActivations",
    "TailConfig",
    "backbone_of",
    "cut_layer",
    "extra_view",
    "fine_tune_tail",
    "load_or_compute",
    "strong_view",
    "tail_model",
]

# Extra training views: a mild warp (the crop is already aligned) plus the
# photometric and resolution changes that photos outside UTKFace bring.
VIEW_WARP = Augmentation(rotation=8.0, translation=0.04, zoom=0.08, shear=4.0)


@dataclass(frozen=True)
class CutActivations:
    """views[v][i]: activations at the cut of view v of crops.paths[i] (float16); view 0 is
    the crop itself, view 1 its mirror, further views random extra_view()s. Rows without
    a face are zeros."""

    found: np.ndarray
    views: np.ndarray  # (V, N, H, W, C) float16


def backbone_of(model: keras.Model) -> keras.Model:
    """The one nested model (the dlib port) inside the full gender model."""
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def cut_layer(model: keras.Model, stages: int) -> str:
    """The layer whose output feeds the last `stages` residual stages of `model`'s port."""
    ends = stage_ends(backbone_of(model))
    if not 1 <= stages < len(ends):
        raise ValueError(f"stages must be in 1..{len(ends) - 1}, not {stages}")
    return ends[-stages - 1]


def tail_model(
    model: keras.Model, cut: str, trainable_stages: int, train_head_norm: bool = False
) -> keras.Model:
    """Cut activations -> P(female) through `model`'s own layers (trained in place).

    Only the convolutions of the last `trainable_stages` stages and the head
    train; dlib's affine layers stay frozen batch norms, and so does the head's
    feature normalisation unless `train_head_norm` (a fresh head needs it).
    """
    backbone = backbone_of(model)
    inputs = keras.Input(backbone.get_layer(cut).output.shape[1:], name="cut")
    features = keras.Model(backbone.get_layer(cut).output, backbone.output)(inputs)
    start = model.layers.index(backbone)
    x = features
    for layer in model.layers[start + 1 :]:
        x = layer(x)
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = train_head_norm
    first = backbone.layers.index(backbone.get_layer(cut_layer(model, trainable_stages))) + 1
    for index, layer in enumerate(backbone.layers):
        layer.trainable = index >= first and isinstance(layer, keras.layers.Conv2D)
    return keras.Model(inputs, x, name=f"{model.name}_tail")


def extra_view(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random training view of an aligned crop: a mild warp (mirrored half the time),
    brightness, contrast and saturation jitter, sometimes grey, sometimes down-up scaled."""
    image = VIEW_WARP(crop, rng).astype(np.float32)
    grey = image @ np.array([0.299, 0.587, 0.114], np.float32)
    if rng.random() < 0.1:
        image = np.repeat(grey[..., None], 3, axis=2)
    else:
        image = grey[..., None] + (image - grey[..., None]) * rng.uniform(0.6, 1.4)
    mean = image.mean()
    image = (image - mean) * rng.uniform(0.7, 1.3) + mean + rng.uniform(-30, 30)
    image = np.clip(image, 0, 255)
    if rng.random() < 0.3:
        size = image.shape[0]
        small = int(rng.uniform(32, 112))
        image = cv2.resize(image, (small, small), interpolation=cv2.INTER_AREA)
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    return image


def strong_view(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """extra_view() plus what other cameras and uploads do to a face: sometimes blur,
    sensor noise, JPEG artefacts, and an occluding block (random erasing)."""
    image = extra_view(crop, rng)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 2.0))
    if rng.random() < 0.3:
        image = image + rng.normal(0.0, rng.uniform(2.0, 10.0), image.shape).astype(np.float32)
    image = np.clip(image, 0, 255)
    if rng.random() < 0.5:
        quality = int(rng.uniform(15, 75))
        encoded = cv2.imencode(".jpg", image.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
        image = np.asarray(cv2.imdecode(encoded[1], cv2.IMREAD_UNCHANGED), np.float32)
    if rng.random() < 0.4:
        size = image.shape[0]
        height, width = (rng.uniform(0.15, 0.45, size=2) * size).astype(int)
        top, left = rng.integers(0, size - height), rng.integers(0, size - width)
        image[top : top + height, left : left + width] = rng.uniform(0, 255, 3)
    return image


VIEWS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "mild": extra_view,
    "strong": strong_view,
}


def load_or_compute(
    crops: CropSet,
    model: keras.Model,
    cut: str,
    extra_views: int = 0,
    seed: int = 1234,
    rows: Sequence[int] | None = None,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
    views: str = "mild",
) -> CutActivations:
    """Activations at `cut` of `rows` of `crops` (default: every crop with a face), their
    mirrors and `extra_views` random VIEWS[views] each, from the cache or computed first."""
    backbone = backbone_of(model)
    chosen = np.flatnonzero(crops.found) if rows is None else np.asarray(rows, dtype=np.int64)
    chosen = chosen[crops.found[chosen]]
    recipe = "" if views == "mild" else f"{views}:"  # "mild" keeps the first caches' keys
    spec = (
        f"cut:{cut}:views{extra_views}:{recipe}seed{seed}:"
        + hashlib.sha256(chosen.tobytes()).hexdigest()
    )
    target = teacher_root() / f"{cache_key(crops, face_recognition_model_path(), spec)}.npy"
    if not target.is_file():
        cutter = keras.Model(backbone.inputs, backbone.get_layer(cut).output)
        make_view = VIEWS[views]
        _compute(target, crops, cutter, chosen, extra_views, make_view, seed, batch_size, progress)
    found = np.zeros(len(crops.paths), dtype=bool)
    found[chosen] = True
    return CutActivations(found=found, views=np.load(target, mmap_mode="r"))


def _compute(
    target: Path,
    crops: CropSet,
    cutter: keras.Model,
    chosen: np.ndarray,
    extra_views: int,
    make_view: Callable[[np.ndarray, np.random.Generator], np.ndarray],
    seed: int,
    batch_size: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    rng = np.random.default_rng(seed)
    shape = (2 + extra_views, len(crops.paths), *cutter.output.shape[1:])
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.stem}.partial.npy")
    views = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=shape)
    for start in range(0, len(chosen), batch_size):
        batch_rows = chosen[start : start + batch_size]
        batch = np.asarray(crops.crops[batch_rows], dtype=np.float32)
        views[0, batch_rows] = cutter.predict_on_batch(batch)
        views[1, batch_rows] = cutter.predict_on_batch(batch[:, :, ::-1])
        for view in range(2, 2 + extra_views):
            extra = np.stack([make_view(np.asarray(crop), rng) for crop in crops.crops[batch_rows]])
            views[view, batch_rows] = cutter.predict_on_batch(extra)
        if progress:
            progress(start + len(batch_rows), len(chosen))
    views.flush()
    del views
    partial.replace(target)


@dataclass(frozen=True)
class TailConfig:
    """How the tail is fine-tuned; activations are cached at `cut_stages` (one cache serves
    every `stages` up to it)."""

    stages: int = 2  # trainable residual stages at the end of the port
    cut_stages: int = 2
    extra_views: int = 2  # random extra views per training crop, besides it and its mirror
    views: str = "mild"  # which VIEWS recipe makes them
    learning_rate: float = 3e-5  # AdamW, cosine decay to 0 over the epochs
    weight_decay: float = 0.01
    child_weight: float = 1.0  # loss weight of faces aged 0-12 (the weakest band), others 1
    epochs: int = 5
    batch_size: int = 128
    seed: int = 1234
    train_head_norm: bool = False  # see tail_model


class _Views(keras.utils.PyDataset):
    """Shuffled float32 batches of cached float16 activations, with labels and loss weights."""

    def __init__(
        self, x: np.ndarray, y: np.ndarray, weights: np.ndarray, batch_size: int, seed: int
    ) -> None:
        super().__init__()
        self.x, self.y, self.weights, self.batch_size = x, y, weights, batch_size
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x))

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        return self.x[rows].astype(np.float32), self.y[rows], self.weights[rows]

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.x))


def fine_tune_tail(
    model: keras.Model,
    config: TailConfig,
    train_parts: Sequence[SplitCrops],
    val: SplitCrops,
    verbose: int | str = "auto",
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> list[dict[str, float]]:
    """Train `model`'s last `config.stages` stages and head, in place, on cached activations
    of every part's crops (all views); leave it with the weights of the best val-accuracy
    epoch, the starting weights counting as epoch 0. Returns each epoch's val accuracy.
    `callbacks` see the tail model's fit (e.g. to score other sets after each epoch)."""
    cut = cut_layer(model, config.cut_stages)
    xs, ys, ws = [], [], []
    for part in train_parts:
        rows = part.rows[part.found]
        cached = load_or_compute(
            part.cropset, model, cut, config.extra_views, config.seed, rows, views=config.views
        )
        xs += [cached.views[view][rows] for view in range(len(cached.views))]
        ys += [part.labels[part.found].astype(np.float32)] * len(cached.views)
        children = np.array([image.age is not None and image.age < 13 for image in part.images])
        weights = np.where(children[part.found], config.child_weight, 1.0).astype(np.float32)
        ws += [weights] * len(cached.views)
    val_rows = val.rows[val.found]
    x_val = np.asarray(load_or_compute(val.cropset, model, cut, rows=val_rows).views[0][val_rows])
    y_val = val.labels[val.found]
    tail = tail_model(model, cut, config.stages, config.train_head_norm)
    feed = _Views(
        np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), config.batch_size, config.seed
    )
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=config.epochs * len(feed)
    )
    tail.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay),
        loss="binary_crossentropy",
    )
    history: list[dict[str, float]] = []
    best: list[np.ndarray] = []

    def score(epoch: int) -> None:
        p = tail.predict(x_val.astype(np.float32), batch_size=512, verbose=0)[:, 0]
        history.append({"epoch": epoch, "val_accuracy": float(np.mean((p >= 0.5) == (y_val == 1)))})
        if history[-1]["val_accuracy"] >= max(row["val_accuracy"] for row in history):
            best[:] = model.get_weights()

    score(0)
    on_epoch = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, _: score(epoch + 1))
    tail.fit(feed, epochs=config.epochs, callbacks=[on_epoch, *callbacks], verbose=verbose)
    model.set_weights(best)
    return history
