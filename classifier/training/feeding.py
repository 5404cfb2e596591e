"""Batches of cached crops for `model.fit`, as a `keras.utils.PyDataset`.

A PyDataset rather than tf.data, so the same training code runs on every
Keras backend (JAX on a GPU box has no TensorFlow). Augmentation runs in
worker threads; OpenCV releases the GIL while it warps.
"""

import math
from typing import Any

import keras
import numpy as np

from classifier.training.augmentation import Augmentation


class CropBatches(keras.utils.PyDataset):
    """(float32 pixels 0..255, float32 labels (B, 1)) batches from rows of a crop array.

    Randomness comes from (seed, epoch, batch index), so a run is reproducible
    whatever order the worker threads finish in.
    """

    def __init__(
        self,
        crops: np.ndarray,
        rows: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        augmentation: Augmentation | None = None,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if len(rows) != len(labels):
            raise ValueError(f"{len(rows)} rows but {len(labels)} labels")
        self.crops = crops
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.float32).reshape(-1, 1)
        self.batch_size = batch_size
        self.augmentation = augmentation
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = epoch
        self._order = self._epoch_order()

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        picked = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        pixels = np.empty((len(picked), *self.crops.shape[1:]), dtype=np.float32)
        for slot, item in enumerate(picked):
            crop = self.crops[self.rows[item]]
            pixels[slot] = self.augmentation(crop, rng) if self.augmentation else crop
        return pixels, self.labels[picked]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._epoch_order()

    def _epoch_order(self) -> np.ndarray:
        order = np.arange(len(self.rows))
        if self.shuffle:
            np.random.default_rng((self.seed, self.epoch)).shuffle(order)
        return order
