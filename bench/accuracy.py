"""Accuracy of the served model on the UTKFace test split, once per inference backend.

    python bench/accuracy.py [--backends keras,litert,litert-int8] [--split test]

Runs classifier.training.evaluation.evaluate (flip-averaging, temperature and
threshold from the model's metadata; an image without a face counts as wrong) for each
backend on the same crops, and prints accuracy and its difference from the
first backend in points. Each backend's evaluation.json goes to
runs/accuracy-<backend>/.
"""

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("FACEGENDER_DATA", REPO.parent / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--data", type=Path, default=DATA / "utkface")
    parser.add_argument("--split", default="test")
    parser.add_argument("--backends", default="keras,litert,litert-int8")
    args = parser.parse_args()

    from classifier.training.evaluation import evaluate

    results = {}
    for backend in args.backends.split(","):
        started = time.perf_counter()
        out = REPO / "runs" / f"accuracy-{backend}"
        results[backend] = evaluate(args.model, args.data, args.split, out, backend=backend)
        results[backend]["seconds"] = time.perf_counter() - started
    base = next(iter(results))
    print(f"{args.split} split of {args.data.name}: {results[base]['images']} images")
    header = f"{'backend':<14}{'accuracy':>10}{'faces acc':>11}{'ROC AUC':>9}{'ECE':>8}"
    print(f"{header}{'vs ' + base:>12}")
    for backend, r in results.items():
        delta = 100 * (r["accuracy"] - results[base]["accuracy"])
        print(
            f"{backend:<14}{r['accuracy']:>10.4f}{r['accuracy_faces']:>11.4f}{r['roc_auc']:>9.4f}"
            f"{r['ece']:>8.4f}{delta:>+9.2f} pt   ({r['seconds']:.0f}s)"
        )


if __name__ == "__main__":
    main()
