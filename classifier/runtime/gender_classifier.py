"""Gender prediction for batches of aligned face crops."""

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from classifier.runtime.artifacts import file_sha256, resolve_model_path
from classifier.runtime.backends import AUTO, BACKENDS, Runner, load_runner, runtime_versions
from classifier.runtime.calibration import (
    Prediction,
    calibrated_p_female,
    needs_mirror,
    to_predictions,
)
from classifier.runtime.keras_runner import has_gpu
from classifier.runtime.metadata import ModelMetadata, read_metadata

# Rows per model call when not given: bench/results/classify_h100_jax.txt shows a
# GPU still gaining at 256 and more; on 2 CPU cores LiteRT is flat from 8 rows on.
GPU_BATCH, CPU_BATCH = 256, 32
# Metadata fields that change what a crop's row says; with the weights served and
# the backend they make the model version.
OUTPUT_FIELDS = (
    "backbone",
    "input_size",
    "preprocessing",
    "alignment",
    "threshold",
    "temperature",
    "flip_average",
    "flip_below",
)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Served:
    """What load() settled: the backend, its runner and the digests of the files it runs."""

    backend: str
    run: Runner
    model_sha256: str
    served_sha256: str | None  # the LiteRT file's, when one is served


class GenderClassifier:
    """Loads a model plus its metadata once, lazily, and classifies crops in batches.

    `backend` names the runtime from BACKENDS, or "auto" for the fastest one this
    machine can load (see classifier.runtime.backends); `backend_used` says which,
    once loaded. Every model call gets `batch_size` rows (when the metadata asks
    for flip-averaging, the mirror images of the unsure faces follow in calls of
    their own), so a traced Keras function is traced once per process; runtimes
    that re-plan cheaply (LiteRT) get a short last batch padded only to a
    multiple of their `pad_multiple`.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        batch_size: int = 64,
        backend: str = AUTO,
        threads: int = 0,
    ):
        """`batch_size` 0 means the backend's own: GPU_BATCH on a GPU, else CPU_BATCH.

        `threads` is for runtimes with their own thread pool (LiteRT); 0 means all cores.
        """
        if backend != AUTO and backend not in BACKENDS:
            choices = ", ".join([AUTO, *BACKENDS])
            raise ValueError(f"unknown backend {backend!r}; choose from {choices}")
        self.model_path = resolve_model_path(model_path)
        self.metadata: ModelMetadata = read_metadata(self.model_path)
        self.batch_size = batch_size
        self.backend = backend
        self.threads = threads
        self._served: _Served | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the model now (idempotent); otherwise the first predict does it."""
        with self._lock:
            if self._served is not None:
                return
            backend, run = load_runner(self.backend, self.model_path, self.threads)
            served = run.served_file
            self._served = _Served(
                backend,
                run,
                file_sha256(self.model_path),
                None if served == self.model_path else file_sha256(served),
            )
            if not self.batch_size:
                self.batch_size = (
                    GPU_BATCH if backend.startswith("keras") and has_gpu() else CPU_BATCH
                )
            log.info("classifier backend: %s, batch %d", backend, self.batch_size)

    @property
    def backend_used(self) -> str | None:
        """The backend serving the model, None before load()."""
        return self._served.backend if self._served else None

    @property
    def version(self) -> str:
        """`<backbone>-<12 hex>` over everything that changes a row: weights served, backend,
        and the metadata in OUTPUT_FIELDS (loads the model to know what is served)."""
        self.load()
        assert self._served is not None
        identity = {
            "model_sha256": self._served.model_sha256,
            "served_sha256": self._served.served_sha256,
            "backend": self._served.backend,
            **{name: getattr(self.metadata, name) for name in OUTPUT_FIELDS},
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return f"{self.metadata.backbone}-{digest[:12]}"

    def provenance(self) -> dict[str, Any]:
        """What produces this classifier's rows, JSON-ready, for a job to record."""
        self.load()
        assert self._served is not None
        return {
            "model_version": self.version,
            "backend": self._served.backend,
            "model": self.model_path.name,
            "served_file": self._served.run.served_file.name,
            "packages": runtime_versions(self._served.backend),
        }

    @property
    def faces_per_call(self) -> int:
        """Faces per model call (mirror images of unsure faces get calls of their own)."""
        self.load()
        return self.batch_size

    def predict(self, crops: np.ndarray) -> list[Prediction]:
        """Aligned RGB uint8 crops (N, S, S, 3) -> one Prediction each."""
        return to_predictions(self.predict_p_female(crops), self.metadata.threshold)

    def predict_p_female(self, crops: np.ndarray) -> np.ndarray:
        """Calibrated P(female) for each crop, flip-averaged where the metadata asks for it."""
        if len(crops) == 0:
            return np.zeros((0,), dtype=np.float64)
        size = self.metadata.input_size
        if crops.shape[1:] != (size, size, 3):
            raise ValueError(f"expected crops of shape (N, {size}, {size}, 3), got {crops.shape}")
        raw = self.raw_outputs(crops)
        if self.metadata.flip_average:
            unsure = np.flatnonzero(needs_mirror(raw, self.metadata.flip_below))
            if len(unsure):
                mirrored = np.asarray(crops[unsure])[:, :, ::-1]
                raw[unsure] = (raw[unsure] + self.raw_outputs(mirrored)) / 2
        return calibrated_p_female(raw, self.metadata.temperature)

    def raw_outputs(self, crops: np.ndarray) -> np.ndarray:
        """Model output per crop, in calls of `batch_size` rows; no flip, no calibration."""
        self.load()
        assert self._served is not None
        run = self._served.run
        rows = self.batch_size
        multiple = run.pad_multiple
        outputs = []
        for start in range(0, len(crops), rows):
            batch = np.asarray(crops[start : start + rows])
            if batch.dtype != np.uint8:
                batch = batch.astype(np.float32)
            count = len(batch)
            wanted = min(rows, -(-count // multiple) * multiple) if multiple else rows
            if count < wanted:
                padding = np.zeros((wanted - count, *batch.shape[1:]), batch.dtype)
                batch = np.concatenate([batch, padding])
            outputs.append(run(batch)[:count])
        return np.concatenate(outputs).astype(np.float64)
