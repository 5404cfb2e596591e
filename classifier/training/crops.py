"""A disk cache of aligned face crops, so training epochs and evaluations skip detection.

Crops are made by the serving path's own functions (detector.load_image,
FaceDetector, align_face), which is what keeps training and serving in step.
The cache is keyed by the file list, the detector settings and the alignment
template, so changing any of them builds a new one.
"""

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector import ALIGNED_SIZE, TEMPLATE, DetectorSettings, Face, FaceDetector, align_face
from detector.cache import cache_root
from detector.loading import ImageLoadError, load_image


@dataclass(frozen=True)
class CropSet:
    """Aligned crops (memory-mapped, N x 224 x 224 x 3) and whether a face was found."""

    paths: list[Path]
    crops: np.ndarray
    found: np.ndarray  # bool per image; False rows hold zeros
    face_counts: np.ndarray


def crops_root() -> Path:
    """$FACEGENDER_CACHE/crops."""
    return cache_root() / "crops"


def main_face(faces: Sequence[Face]) -> Face | None:
    """The face a one-person photo is about: the largest box."""
    return max(faces, key=lambda f: f.box[2] * f.box[3], default=None)


def load_or_build(
    paths: Sequence[Path],
    settings: DetectorSettings | None = None,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> CropSet:
    """Crops for `paths` from the cache, building the missing cache first."""
    settings = settings or DetectorSettings()
    paths = [Path(p) for p in paths]
    folder = crops_root() / _key(paths, settings)
    if not (folder / "index.json").is_file():
        _build(folder, paths, settings, batch_size, progress)
    index = json.loads((folder / "index.json").read_text())
    crops = np.load(folder / "crops.npy", mmap_mode="r")
    return CropSet(
        paths=paths,
        crops=crops,
        found=np.asarray(index["found"], dtype=bool),
        face_counts=np.asarray(index["face_counts"], dtype=np.int32),
    )


def _key(paths: Sequence[Path], settings: DetectorSettings) -> str:
    digest = hashlib.sha256()
    digest.update(repr(settings).encode())
    digest.update(np.asarray(TEMPLATE).tobytes())
    for path in paths:
        digest.update(f"{path.resolve()}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def _build(
    folder: Path,
    paths: list[Path],
    settings: DetectorSettings,
    batch_size: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shape = (len(paths), ALIGNED_SIZE, ALIGNED_SIZE, 3)
    crops = np.lib.format.open_memmap(
        folder / "crops.npy.tmp", mode="w+", dtype=np.uint8, shape=shape
    )
    found = np.zeros(len(paths), dtype=bool)
    counts = np.zeros(len(paths), dtype=np.int32)
    detector = FaceDetector(settings)
    with ThreadPoolExecutor(max_workers=2) as pool:
        batches = [
            range(i, min(i + batch_size, len(paths))) for i in range(0, len(paths), batch_size)
        ]
        decoded = pool.map(lambda b: [_pixels(paths[i]) for i in b], batches)
        for batch, images in zip(batches, decoded, strict=True):
            ok = [(i, image) for i, image in zip(batch, images, strict=True) if image is not None]
            results = detector.detect_batch([image for _, image in ok])
            for (i, image), faces in zip(ok, results, strict=True):
                counts[i] = len(faces)
                face = main_face(faces)
                if face is not None:
                    crops[i] = align_face(image, face.landmarks)
                    found[i] = True
            if progress:
                progress(batch.stop, len(paths))
    crops.flush()
    del crops
    os.replace(folder / "crops.npy.tmp", folder / "crops.npy")
    index = {
        "paths": [str(p) for p in paths],
        "found": found.tolist(),
        "face_counts": counts.tolist(),
        "settings": repr(settings),
    }
    (folder / "index.json").write_text(json.dumps(index))


def _pixels(path: Path) -> np.ndarray | None:
    try:
        return load_image(path).pixels
    except ImageLoadError:
        return None
