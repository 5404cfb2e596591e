"""Pipeline bounds and large photos: decoded pixels stay bounded, faces land in file pixels."""

import json
import shutil
import subprocess
import sys
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from detector import load_image
from worker import pipeline
from worker.db import Face, open_database
from worker.embedded import run_folder

REPO = Path(__file__).resolve().parents[2]


def _upscaled(source: Path, target: Path, size: tuple[int, int]) -> Path:
    """A real photo made large (as a camera's would be) at test time; never committed."""
    Image.open(source).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(
        target, quality=90
    )
    return target


class _LivePixels:
    """Counts the pixels of decoded images still referenced anywhere, and the peak."""

    def __init__(self) -> None:
        self.live = self.peak = self.largest = 0
        self._lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        loaded = load_image(*args, **kwargs)
        pixels = loaded.pixels.shape[0] * loaded.pixels.shape[1]
        with self._lock:
            self.live += pixels
            self.peak = max(self.peak, self.live)
            self.largest = max(self.largest, pixels)
        weakref.finalize(loaded.pixels, self._gone, pixels)
        return loaded

    def _gone(self, pixels: int) -> None:
        with self._lock:
            self.live -= pixels


def test_decoded_pixels_stay_bounded_on_a_folder_of_large_photos(
    tmp_path, crowd_files, models, monkeypatch
):
    folder = tmp_path / "large"
    folder.mkdir()
    for index, source in enumerate(crowd_files[:12]):
        _upscaled(source, folder / f"{index:02}.jpg", (3200, 2400))  # 7.7 MP, decoded whole
    counter = _LivePixels()
    monkeypatch.setattr(pipeline, "load_image", counter)
    sessions = open_database(f"sqlite:///{tmp_path / 'large.db'}")
    _, totals = run_folder(sessions, folder, models, batch_size=12)  # one batch of all of them
    assert totals.done == 12 and totals.faces > 0
    total = 12 * 3200 * 2400
    # The budget, plus one image waiting for its turn in each decode thread.
    bound = pipeline.DECODED_PIXELS + pipeline._DECODE_THREADS * counter.largest
    assert counter.peak <= bound < total / 2
    assert counter.live == 0  # nothing keeps an image once the batch is stored


def _stored_faces(folder: Path, tmp_path: Path, models) -> list[tuple[np.ndarray, np.ndarray]]:
    """(box x1 y1 x2 y2, landmarks 5x2) of each face `facegender run` stores for `folder`."""
    sessions = open_database(f"sqlite:///{tmp_path / 'faces.db'}")
    job_id, _ = run_folder(sessions, folder, models, batch_size=4)
    with sessions() as session:
        rows = session.scalars(select(Face).where(Face.job_id == job_id).order_by(Face.face_index))
        return [
            (
                np.array([r.x, r.y, r.x + r.w, r.y + r.h]),
                np.array(
                    [
                        [getattr(r, f"{name}_x"), getattr(r, f"{name}_y")]
                        for name in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
                    ]
                ),
            )
            for r in rows
        ]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize(
    ("name", "size"),
    [("reduced_by_libjpeg.jpg", (4160, 3120)), ("resized_after_decoding.png", (3000, 2250))],
)
def test_faces_of_a_large_photo_land_in_its_own_pixels(name, size, tmp_path, crowd_files, models):
    """Decoded reduced (JPEG draft by 2, PNG resized by 0.68), faces come back in file pixels.

    The reference is the detector on the whole decoded photo (it downscales to
    its max_side itself, so both see nearly the same detection image).
    """
    folder = tmp_path / "photo"
    folder.mkdir()
    path = _upscaled(crowd_files[1], folder / name, size)
    whole = load_image(path)
    assert whole.scale == 1.0 and load_image(path, min_side=pipeline.DECODE_SIDE).scale < 0.7
    expected = [
        (np.array([x, y, x + w, y + h]), face.landmarks)
        for face in models.detector.detect(whole.pixels)
        for x, y, w, h in [face.box]
    ]
    stored = _stored_faces(folder, tmp_path, models)
    assert len(expected) >= 2 and abs(len(stored) - len(expected)) <= len(expected) // 10
    matched = 0
    for box, landmarks in expected:
        best = max(stored, key=lambda face: _iou(face[0], box))
        if _iou(best[0], box) >= 0.8:
            matched += 1
            width = box[2] - box[0]
            assert np.abs(best[1] - landmarks).max() <= max(3.0, 0.05 * width)
    assert matched >= 0.9 * len(expected)
    for box, _ in stored:
        assert 0 <= box[0] < box[2] <= size[0] and 0 <= box[1] < box[3] <= size[1]


def test_run_loads_no_tensorflow_keras_celery_or_matplotlib_and_logs_nothing(
    tmp_path, utkface_files
):
    """`facegender run` as a user starts it (the console script's `entry`): a process of its
    own, default verbosity; it ends with its objects frozen out of the garbage collector."""
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / utkface_files[0].name).symlink_to(utkface_files[0])
    script = (
        "import atexit, gc, sys\n"
        "from worker.cli import entry\n"
        "heavy = {'tensorflow', 'keras', 'celery', 'matplotlib', 'jax', 'torch'}\n"
        "atexit.register(lambda: print('loaded:', sorted(heavy & {name.split('.')[0] for name"
        " in sys.modules}), 'frozen:', gc.get_freeze_count() > 0))\n"
        "entry()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "run", str(folder), "--db", f"sqlite:///{tmp_path}/r.db"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "loaded: [] frozen: True" in done.stdout, done.stdout
    assert "1 done, 0 errors, 1 faces" in done.stdout
    noise = ("tensorflow", "absl", "xnnpack", "onednn", "warning", "i0000", "w0000")
    logged = [line for line in done.stderr.splitlines() if any(n in line.lower() for n in noise)]
    assert logged == []


def test_a_model_without_its_runtime_files_runs_on_keras_with_one_notice(tmp_path, utkface_files):
    """Only `model.keras` and its `model.json`: Keras (TensorFlow) serves it, and the one
    line that says so is all that reaches stderr besides the progress bar."""
    model = tmp_path / "model"
    model.mkdir()
    for name in ("model.keras", "model.json"):
        shutil.copy(REPO / "classifier" / "default_model" / name, model / name)
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / utkface_files[0].name).symlink_to(utkface_files[0])
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("facegender")),
            "run",
            str(folder),
            "--model",
            str(model / "model.keras"),
            "--db",
            f"sqlite:///{tmp_path}/r.db",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "1 done, 0 errors, 1 faces" in done.stdout
    lines = [line for line in done.stderr.splitlines() if "━" not in line and line.strip()]
    assert len(lines) == 1 and "serving it with Keras instead" in lines[0], done.stderr


def test_evaluate_logs_its_progress_and_nothing_of_tensorflow(tmp_path, data_dir):
    """A training command imports TensorFlow; its absl notices stay off stderr all the same."""
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("facegender")),
            "evaluate",
            "--data",
            str(data_dir / "webfaces"),
            "--limit",
            "20",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    noise = ("absl", "onednn", "cpu_feature_guard", "i0000", "w0000")
    logged = [line for line in done.stderr.splitlines() if any(n in line.lower() for n in noise)]
    assert logged == []
    assert "wrote" in done.stderr and json.loads(done.stdout)["images"] == 20
