"""The detector alone, this checkout's against another's, on the e2e cases' images.

    python bench/detect.py --baseline-code DIR [--cases utkface,webfaces,...] [--repeat 3]
                           [--limit N] [--workers 1]

DIR is another checkout of facegender (e.g. `git worktree add /tmp/base <rev>`). Each
case's images (bench/e2e.py's `make_case`) are decoded once per run; the timed part
is `FaceDetector.detect_batch` on groups of 16 images, on one ONNX Runtime thread, in
a fresh process per run that imports `detector` from its checkout; `--workers 2`
detects two groups at once on threads of their own, as `facegender run` does on two
cores (where Python's share of the work contends for the interpreter lock). Runs alternate
between the two checkouts --repeat times (medians printed, so a busy machine slows
both alike); the ratio is baseline time / this checkout's time, and the faces found
by each are printed beside it (they should be equal).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CASES = ("utkface", "webfaces", "webfaces-onesize", "crowds", "wild448")
_GROUP = 16

_TIMER = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, sys.argv[1])
from detector import FaceDetector, load_image
paths = sorted(p for p in __import__("pathlib").Path(sys.argv[2]).iterdir())
images = [load_image(p).pixels for p in paths]
detector = FaceDetector(threads=1)
detector.detect_batch(images[:_GROUP])  # loads the networks and warms up
groups = [images[i : i + _GROUP] for i in range(0, len(images), _GROUP)]
started = time.perf_counter()
with ThreadPoolExecutor(int(sys.argv[3])) as pool:
    faces = sum(sum(map(len, found)) for found in pool.map(detector.detect_batch, groups))
print(json.dumps({"seconds": time.perf_counter() - started, "images": len(images), "faces": faces}))
""".replace("_GROUP", str(_GROUP))


def timed(code: Path, folder: Path, workers: int) -> dict:
    """One run of the detector of checkout `code` over `folder`, in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", _TIMER, str(code), str(folder), str(workers)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    from bench.e2e import make_case

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-code", type=Path, required=True)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="at most N images per case")
    parser.add_argument("--workers", type=int, default=1, help="groups detected at once")
    args = parser.parse_args()
    codes = {"ours": REPO, "baseline": args.baseline_code.resolve()}
    where = f"{args.workers} worker thread(s) of 1 ONNX Runtime thread"
    print(f"this checkout {REPO}, baseline {codes['baseline']}; detector on {where}")
    print(f"{'case':18} {'ours ms/img':>12} {'base ms/img':>12} {'base/ours':>10} {'faces':>13}")
    with tempfile.TemporaryDirectory() as scratch:
        for case in args.cases.split(","):
            folder = Path(scratch) / case
            make_case(case, folder, args.limit)
            runs: dict[str, list[dict]] = {name: [] for name in codes}
            for round_ in range(args.repeat):
                order = list(codes) if round_ % 2 == 0 else list(reversed(codes))
                for name in order:
                    runs[name].append(timed(codes[name], folder, args.workers))
            ms = {
                name: statistics.median(r["seconds"] / r["images"] for r in found) * 1000
                for name, found in runs.items()
            }
            faces = f"{runs['ours'][0]['faces']} / {runs['baseline'][0]['faces']}"
            ratio = ms["baseline"] / ms["ours"]
            print(f"{case:18} {ms['ours']:12.2f} {ms['baseline']:12.2f} {ratio:9.2f}x {faces:>13}")


if __name__ == "__main__":
    main()
