"""Classifier throughput alone: faces/s on aligned crops at batch sizes 1..256, per backend.

    python bench/classify.py [--crops FILE.npy] [--backends keras,...] [--faces N]

Crops come from FILE.npy (N x 224 x 224 x 3 uint8) or are made from UTKFace
images in $FACEGENDER_DATA (default ../shared/data) with the serving detector
and alignment. Each backend is timed in this process on the same crops; the
first batch of every size is a warm-up (tracing, compilation) and not timed.
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def utkface_crops(count: int) -> np.ndarray:
    from detector import FaceDetector, align_face, load_image

    data = Path(os.environ.get("FACEGENDER_DATA", REPO.parent / "shared" / "data"))
    files = sorted((data / "utkface").glob("*.jpg"))[::7][: count * 2]
    images = [load_image(p).pixels for p in files]
    crops = []
    for image, faces in zip(images, FaceDetector().detect_batch(images), strict=True):
        crops += [align_face(image, f.landmarks) for f in faces[:1]]
    return np.stack(crops[:count])


def faces_per_second(classifier, crops: np.ndarray, batch_size: int, seconds: float) -> float:
    """Steady-state rate: repeat full batches until `seconds` have passed."""
    classifier.batch_size = batch_size
    batch = crops[:batch_size]
    classifier.predict_p_female(batch)  # warm-up: trace/compile this shape
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        classifier.predict_p_female(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=Path, help="an .npy of aligned crops")
    parser.add_argument("--faces", type=int, default=256)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--backends", default=None, help="comma-separated; default: all offered")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing window per point")
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    args = parser.parse_args()

    from classifier.inference import BACKENDS, GenderClassifier

    crops = np.load(args.crops)[: args.faces] if args.crops else utkface_crops(args.faces)
    sizes = [int(s) for s in args.batch_sizes.split(",") if int(s) <= len(crops)]
    backends = args.backends.split(",") if args.backends else list(BACKENDS)
    import keras

    print(f"keras backend: {keras.backend.backend()}, {len(crops)} crops, flip-average off")
    rows = {}
    for backend in backends:
        classifier = GenderClassifier(args.model, backend=backend)
        object.__setattr__(classifier, "metadata", _no_flip(classifier.metadata))
        rows[backend] = [faces_per_second(classifier, crops, s, args.seconds) for s in sizes]
    print("batch  " + "  ".join(f"{b:>10}" for b in backends))
    for i, size in enumerate(sizes):
        print(f"{size:>5}  " + "  ".join(f"{rows[b][i]:10.1f}" for b in backends))
    base = backends[0]
    for backend in backends[1:]:
        best = max(rows[backend]) / max(rows[base])
        print(f"best {backend} / best {base}: {best:.2f}x")


def _no_flip(metadata):
    from dataclasses import replace

    return replace(metadata, flip_average=False)


if __name__ == "__main__":
    main()
