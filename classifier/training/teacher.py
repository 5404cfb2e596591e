"""dlib face descriptors of a crop set, computed once and cached: the teacher for distillation.

The ported dlib network (classifier.training.dlib_resnet) costs several times a
training step per face, so it never runs per augmented sample: its 128-d
descriptors of each aligned crop, and of the crop mirrored left-right, are kept in
`$FACEGENDER_CACHE/teacher/<key>.npz` (default ~/.cache/facegender). The key
covers the crop pixels themselves, the model file and the crop-to-chip geometry,
so any change to detection, alignment or the teacher makes a new file. Another
embedding backbone of the port (`dlib_resnet_stages`: its pooled last stages)
is cached the same way under a key that also names it.

    crops = load_or_build(paths)            # classifier.training.crops
    teacher = load_or_compute(crops)         # TeacherEmbeddings, rows as crops.paths
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifier.training.backbones import build_backbone
from classifier.training.crops import CropSet
from classifier.training.dlib_resnet import ALIGNED_TO_CHIP, face_recognition_model_path
from detector.cache import cache_root

__all__ = ["TEACHER", "TeacherEmbeddings", "load_or_compute", "teacher_root"]

TEACHER = "dlib_resnet"  # the embedding backbone whose 128-d descriptors teach


@dataclass(frozen=True)
class TeacherEmbeddings:
    """Row i belongs to crops.paths[i]; rows without a face (found False) are zeros."""

    paths: list[str]
    found: np.ndarray
    embeddings: np.ndarray  # (N, D) float32; D = 128 for the descriptor
    mirrored: np.ndarray  # (N, D) float32, of the left-right mirrored crop


def teacher_root() -> Path:
    """$FACEGENDER_CACHE/teacher, beside the crop cache."""
    return cache_root() / "teacher"


def cache_key(crops: CropSet, model_path: Path, backbone: str) -> str:
    """A cache file name from the crops' pixels, the `.dat` file, chip geometry and `backbone`."""
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(model_path.read_bytes()).digest())
    if backbone != TEACHER:  # the descriptor's files keep the key they always had
        digest.update(backbone.encode())
    digest.update(repr(ALIGNED_TO_CHIP).encode())
    digest.update(np.asarray(crops.found).tobytes())
    for path in crops.paths:
        digest.update(f"{path}\n".encode())
    for start in range(0, len(crops.crops), 1024):  # the pixels: ~1 s per 10,000 crops
        digest.update(np.ascontiguousarray(crops.crops[start : start + 1024]).data)
    return digest.hexdigest()[:16]


def load_or_compute(
    crops: CropSet,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
    backbone: str = TEACHER,
) -> TeacherEmbeddings:
    """`backbone`'s features (default: the teacher's descriptors) of `crops` from the cache,
    computing them first if missing."""
    model_path = face_recognition_model_path()
    target = teacher_root() / f"{cache_key(crops, model_path, backbone)}.npz"
    if not target.is_file():
        _compute(target, crops, backbone, batch_size, progress)
    with np.load(target) as stored:
        return TeacherEmbeddings(
            paths=[str(p) for p in stored["paths"]],
            found=stored["found"],
            embeddings=stored["embeddings"],
            mirrored=stored["mirrored"],
        )


def _compute(
    target: Path,
    crops: CropSet,
    backbone: str,
    batch_size: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    model, _ = build_backbone(backbone, "imagenet")
    rows = np.flatnonzero(crops.found)
    embeddings = np.zeros((len(crops.paths), model.output.shape[-1]), np.float32)
    mirrored = np.zeros_like(embeddings)
    for start in range(0, len(rows), batch_size):
        chosen = rows[start : start + batch_size]
        batch = np.asarray(crops.crops[chosen], dtype=np.float32)
        embeddings[chosen] = model.predict_on_batch(batch)
        mirrored[chosen] = model.predict_on_batch(batch[:, :, ::-1])
        if progress:
            progress(start + len(chosen), len(rows))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.stem}.partial.npz")
    np.savez(
        partial,
        paths=np.array([str(p) for p in crops.paths]),
        found=np.asarray(crops.found, dtype=bool),
        embeddings=embeddings,
        mirrored=mirrored,
    )
    partial.replace(target)
