"""Process a batch of image rows: decode, detect, align, classify, store.

The embedded `run` and the Celery task both call `process_images`; it is
safe to call again for the same ids (redelivery): images already done are
skipped, and each image's faces and final status are written in one
transaction, so a crash at any point leaves an image either untouched
(pending) or complete.
"""

import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from classifier import GenderClassifier
from detector import DetectorSettings, Face, FaceDetector, align_face
from detector.faces import LANDMARK_NAMES
from detector.loading import ImageLoadError, LoadedImage, load_image
from worker.config import Settings
from worker.db import DONE, ERROR, PENDING, Image, utcnow
from worker.db import Face as FaceRow

_DECODE_THREADS = 2


@dataclass
class Models:
    """The per-process models, loaded once and reused for every batch."""

    detector: FaceDetector
    classifier: GenderClassifier

    @classmethod
    def from_settings(cls, settings: Settings) -> "Models":
        detector = FaceDetector(
            DetectorSettings(max_side=settings.max_side, min_face_size=settings.min_face_size)
        )
        classifier = GenderClassifier(settings.model_path, batch_size=settings.batch_size)
        return cls(detector=detector, classifier=classifier)

    def load(self) -> None:
        self.detector.load()
        self.classifier.load()


@dataclass
class BatchReport:
    """What one call did, with seconds spent per stage (for progress and benchmarks)."""

    done: int = 0
    errors: int = 0
    faces: int = 0
    skipped: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))


@dataclass
class _Work:
    image_id: int
    job_id: int
    path: str
    loaded: LoadedImage | None = None
    error_code: str | None = None
    error: str | None = None
    faces: list[Face] = field(default_factory=list)


def process_images(
    sessions: sessionmaker[Session],
    image_ids: Sequence[int],
    models: Models,
    max_attempts: int = 3,
) -> BatchReport:
    """Process the pending images among `image_ids` and store their results."""
    report = BatchReport()
    clock = time.perf_counter()
    work = _claim(sessions, image_ids, max_attempts, report)
    report.seconds["db"] += time.perf_counter() - clock
    if work:
        _decode(work, report)
        _detect(work, models.detector, report)
        crops, owners = _align(work, report)
        predictions = _classify(crops, models.classifier, report)
        clock = time.perf_counter()
        _store(sessions, work, owners, predictions, models.classifier.version, report)
        report.seconds["db"] += time.perf_counter() - clock
    return report


def _claim(
    sessions: sessionmaker[Session],
    image_ids: Sequence[int],
    max_attempts: int,
    report: BatchReport,
) -> list[_Work]:
    """Count an attempt on each pending image; give up on those out of attempts."""
    work = []
    with sessions.begin() as session:
        rows = session.scalars(
            select(Image).where(Image.id.in_(image_ids), Image.status == PENDING).order_by(Image.id)
        ).all()
        report.skipped = len(image_ids) - len(rows)
        for row in rows:
            if row.attempts >= max_attempts:
                row.status, row.error_code, row.processed_at = ERROR, "gave_up", utcnow()
                row.error = (
                    f"gave up after {row.attempts} attempts: processing this image "
                    "crashed or failed its worker every time"
                )
                report.errors += 1
                continue
            row.attempts += 1
            work.append(_Work(image_id=row.id, job_id=row.job_id, path=row.path))
    return work


def _decode(work: list[_Work], report: BatchReport) -> None:
    clock = time.perf_counter()
    with ThreadPoolExecutor(_DECODE_THREADS) as pool:
        for item, outcome in zip(work, pool.map(_load, [w.path for w in work]), strict=True):
            if isinstance(outcome, ImageLoadError):
                item.error_code, item.error = outcome.reason, outcome.message
            else:
                item.loaded = outcome
    report.seconds["decode"] += time.perf_counter() - clock


def _load(path: str) -> LoadedImage | ImageLoadError:
    try:
        return load_image(path)
    except ImageLoadError as exc:
        return exc


def _detect(work: list[_Work], detector: FaceDetector, report: BatchReport) -> None:
    """Detect in one batch; if the batch fails, retry image by image to isolate the culprit."""
    clock = time.perf_counter()
    ready = [w for w in work if w.loaded is not None]
    try:
        found = detector.detect_batch([w.loaded.pixels for w in ready])
        for item, faces in zip(ready, found, strict=True):
            item.faces = faces
    except Exception:
        for item in ready:
            try:
                item.faces = detector.detect(item.loaded.pixels)
            except Exception as exc:
                item.error_code, item.error = "detection_failed", f"face detection failed: {exc}"
    report.seconds["detect"] += time.perf_counter() - clock


def _align(work: list[_Work], report: BatchReport) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """All aligned crops of the batch in one array, with (work index, face index) owners."""
    clock = time.perf_counter()
    crops, owners = [], []
    for index, item in enumerate(work):
        if item.error_code or item.loaded is None:
            continue
        for face_index, face in enumerate(item.faces):
            crops.append(align_face(item.loaded.pixels, face.landmarks))
            owners.append((index, face_index))
    report.seconds["align"] += time.perf_counter() - clock
    stacked = np.stack(crops) if crops else np.zeros((0, 224, 224, 3), np.uint8)
    return stacked, owners


def _classify(crops: np.ndarray, classifier: GenderClassifier, report: BatchReport) -> list:
    clock = time.perf_counter()
    predictions = classifier.predict(crops)
    report.seconds["classify"] += time.perf_counter() - clock
    return predictions


def _store(
    sessions: sessionmaker[Session],
    work: list[_Work],
    owners: list[tuple[int, int]],
    predictions: list,
    model_version: str,
    report: BatchReport,
) -> None:
    """One transaction: faces and final status of every image still pending (locked)."""
    by_work: dict[int, list[tuple[int, object]]] = defaultdict(list)
    for (index, face_index), prediction in zip(owners, predictions, strict=True):
        by_work[index].append((face_index, prediction))
    with sessions.begin() as session:
        ids = [w.image_id for w in work]
        rows = {
            row.id: row
            for row in session.scalars(
                select(Image).where(Image.id.in_(ids), Image.status == PENDING).with_for_update()
            )
        }
        face_rows = []
        now = utcnow()
        for index, item in enumerate(work):
            row = rows.get(item.image_id)
            if row is None:  # finished meanwhile by a redelivered copy of this batch
                report.skipped += 1
                continue
            row.processed_at = now
            if item.loaded is not None:
                row.sha256, row.width, row.height = (
                    item.loaded.sha256,
                    item.loaded.width,
                    item.loaded.height,
                )
            if item.error_code:
                row.status, row.error_code, row.error = ERROR, item.error_code, item.error
                report.errors += 1
                continue
            row.status, row.face_count = DONE, len(item.faces)
            report.done += 1
            for face_index, prediction in by_work[index]:
                face_rows.append(
                    _face_row(item, face_index, prediction, model_version)  # type: ignore[arg-type]
                )
        if face_rows:
            session.execute(insert(FaceRow), face_rows)
        report.faces += len(face_rows)


def _face_row(item: _Work, face_index: int, prediction, model_version: str) -> dict[str, object]:
    face = item.faces[face_index]
    x, y, w, h = face.box
    row: dict[str, object] = {
        "job_id": item.job_id,
        "image_id": item.image_id,
        "face_index": face_index,
        "x": x,
        "y": y,
        "w": w,
        "h": h,
        "det_confidence": face.score,
        "gender": prediction.gender,
        "confidence": prediction.confidence,
        "model_version": model_version,
    }
    for name, (px, py) in zip(LANDMARK_NAMES, face.landmarks.tolist(), strict=True):
        row[f"{name}_x"], row[f"{name}_y"] = px, py
    return row
