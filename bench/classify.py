"""Classifier throughput alone: faces/s on aligned crops at batch sizes 1..256, per backend.

    python bench/classify.py [--crops FILE.npy] [--backends keras,...] [--faces N] [--repeat 3]
                             [--model PATH] [--baseline-model PATH]

Crops come from FILE.npy (N x 224 x 224 x 3 uint8) or are made from UTKFace
images in $FACEGENDER_DATA (default ../shared/data) with the serving detector
and alignment. Every backend is loaded in this process and timed on the same
crops, interleaved (size by size, backend by backend, --repeat rounds) so that
a busy machine slows all alike; the median round is printed. The first batch
of every size is a warm-up (tracing, compilation, re-planning) and not timed.
Flip-averaging is off: one face is one model row (the shipped metadata also
mirrors the faces the model is unsure of, about 7% of them: one more row each).
With --baseline-model, each backend also runs that model (column `B@base`),
interleaved the same way, and the ratios compare the two models per backend.
"""

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
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
    parser.add_argument("--baseline-model", type=Path, default=None, help="compare against it")
    parser.add_argument("--backends", default=None, help="comma-separated; default: all offered")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing window per point")
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the median is printed")
    args = parser.parse_args()

    from classifier.runtime.artifacts import ArtifactMissingError
    from classifier.runtime.backends import BACKENDS
    from classifier.runtime.gender_classifier import GenderClassifier

    crops = np.load(args.crops)[: args.faces] if args.crops else utkface_crops(args.faces)
    sizes = [int(s) for s in args.batch_sizes.split(",") if int(s) <= len(crops)]
    backends = args.backends.split(",") if args.backends else list(BACKENDS)
    if any(backend.startswith("keras") for backend in backends):
        import keras

        from worker.runtime import configure_tensorflow

        configure_tensorflow(int(os.environ.get("FACEGENDER_TF_THREADS") or 0))
        print(f"keras backend: {keras.backend.backend()}")
    print(
        f"{len(crops)} crops, flip-average off, {len(os.sched_getaffinity(0))} CPUs, "
        f"median of {args.repeat} round(s) of {args.seconds:g}s per point"
    )
    models = {"": args.model} | ({"@base": args.baseline_model} if args.baseline_model else {})
    classifiers = {}
    for backend in backends:
        for suffix, model in models.items():
            classifier = GenderClassifier(model, backend=backend)
            classifier.metadata = replace(classifier.metadata, flip_average=False)
            try:
                classifier.load()
            except ArtifactMissingError as exc:  # e.g. no float32 LiteRT file exported
                print(f"skipping {backend}{suffix}: {exc}")
                continue
            classifiers[backend + suffix] = classifier
    backends = list(classifiers)
    rounds: dict[str, list[list[float]]] = {b: [[] for _ in sizes] for b in backends}
    for _ in range(args.repeat):
        for i, size in enumerate(sizes):
            for backend, classifier in classifiers.items():
                rate = faces_per_second(classifier, crops, size, args.seconds)
                rounds[backend][i].append(rate)
    rows = {b: [statistics.median(r) for r in per_size] for b, per_size in rounds.items()}
    print("batch  " + "  ".join(f"{b:>12}" for b in backends))
    for i, size in enumerate(sizes):
        print(f"{size:>5}  " + "  ".join(f"{rows[b][i]:12.1f}" for b in backends))
    if args.baseline_model:
        for backend in (b for b in backends if f"{b}@base" in rows):
            best = max(rows[backend]) / max(rows[f"{backend}@base"])
            print(f"best {backend} / best {backend}@base: {best:.2f}x")
        return
    base = backends[0]
    for backend in backends[1:]:
        best = max(rows[backend]) / max(rows[base])
        print(f"best {backend} / best {base}: {best:.2f}x")


if __name__ == "__main__":
    main()
