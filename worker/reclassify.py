"""Re-classify a job's faces with another model from their stored landmarks: no detector.

Each done image with faces is decoded as the pipeline decodes it (large
photos at a reduced scale), its faces aligned from the stored landmarks
(mapped from file pixels to the decoded ones), and only the classifier runs.
The new rows go next to the old ones: same job, image and face_index, box,
landmarks and detection score copied, under the new model version.

Batches are transactions of their own and an image that already has rows of
the new version is skipped, so a crashed or interrupted reclassify is simply
run again. An image whose file no longer has the content that was detected
(its sha256 differs) becomes an error row, code `changed` (its earlier rows
are kept, for the record); a file that cannot be read any more becomes an
error row with the loader's code. Either way `facegender run` on the folder
detects it again in a new job.
"""

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import exists, insert, select
from sqlalchemy.orm import Session, sessionmaker

from classifier import GenderClassifier
from classifier.runtime.unsure import UnsureRule
from detector import Face, align_face
from detector.faces import LANDMARK_NAMES
from detector.loading import ImageLoadError, load_image
from worker.batch import WorkItem
from worker.db import DONE, ERROR, Image, utcnow
from worker.db import Face as FaceRow
from worker.jobs import job_unsure_rule
from worker.pipeline import DECODE_SIDE
from worker.scan import os_path
from worker.store import face_row

CHANGED = "changed"
_DECODE_THREADS = 2


@dataclass
class ReclassifyReport:
    """What one call did: images and faces re-classified, images found changed or unreadable."""

    images: int = 0
    faces: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, other: "ReclassifyReport") -> None:
        self.images += other.images
        self.faces += other.faces
        self.errors += other.errors
        self.skipped += other.skipped
        for stage, seconds in other.seconds.items():
            self.seconds[stage] += seconds


def todo_ids(sessions: sessionmaker[Session], job_id: int, model_version: str) -> list[int]:
    """The job's done images with faces and no rows of `model_version` yet, by id."""
    with sessions() as session:
        return list(
            session.scalars(_todo(model_version).where(Image.job_id == job_id).order_by(Image.id))
        )


def _todo(model_version: str | None = None):
    query = select(Image.id).where(Image.status == DONE, Image.face_count > 0)
    return query if model_version is None else query.where(~_has_rows(model_version))


def _has_rows(model_version: str):
    return exists().where(FaceRow.image_id == Image.id, FaceRow.model_version == model_version)


def reclassify_job(
    sessions: sessionmaker[Session],
    job_id: int,
    classifier: GenderClassifier,
    batch_size: int = 32,
    on_batch: Callable[[ReclassifyReport], None] | None = None,
) -> ReclassifyReport:
    """Re-classify every face of the job not yet classified by `classifier`; the totals."""
    totals = ReclassifyReport()
    ids = todo_ids(sessions, job_id, classifier.version)
    for chunk in _chunks(ids, batch_size):
        report = reclassify_images(sessions, chunk, classifier)
        totals.add(report)
        if on_batch:
            on_batch(report)
    return totals


def _chunks(ids: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


@dataclass
class _Image:
    """One image to re-classify: where it is, what was detected in it, what it is now."""

    id: int
    job_id: int
    path: str
    sha256: str | None
    faces: list[Face]
    crops: list[np.ndarray] = field(default_factory=list)
    error_code: str | None = None
    error: str | None = None


def reclassify_images(
    sessions: sessionmaker[Session], image_ids: Sequence[int], classifier: GenderClassifier
) -> ReclassifyReport:
    """Re-classify these images' faces (those still to do) and store them in one transaction."""
    report = ReclassifyReport()
    version = classifier.version
    images = _load_faces(sessions, image_ids, version)
    report.skipped += len(image_ids) - len(images)
    with ThreadPoolExecutor(_DECODE_THREADS) as pool:
        list(pool.map(_crops, images))
    crops = [crop for image in images for crop in image.crops]
    predictions = classifier.predict(np.stack(crops)) if crops else []
    with sessions.begin() as session:
        still = set(
            session.scalars(
                _todo(version).where(Image.id.in_([i.id for i in images])).with_for_update()
            )
        )
        rules: dict[int, UnsureRule] = {}
        rows, at = [], 0
        for image in images:
            count = len(image.crops)
            answers, at = predictions[at : at + count], at + count
            if image.id not in still:  # done meanwhile by another reclassify
                report.skipped += 1
                continue
            if image.error_code:
                _mark_error(session, image)
                report.errors += 1
                continue
            if image.job_id not in rules:
                fallback = classifier.metadata.unsure
                rules[image.job_id] = job_unsure_rule(session, image.job_id, fallback)
            item = WorkItem(image.id, image.job_id, image.path, faces=image.faces)
            for index, prediction in enumerate(answers):
                rows.append(face_row(item, index, prediction, version, rules[image.job_id]))
            report.images += 1
        if rows:
            session.execute(insert(FaceRow), rows)
        report.faces += len(rows)
    return report


def _load_faces(
    sessions: sessionmaker[Session], image_ids: Sequence[int], version: str
) -> list[_Image]:
    """The images still to do, with the faces of their first-written model version's rows."""
    with sessions() as session:
        found = session.execute(
            select(Image.id, Image.job_id, Image.path, Image.path_raw, Image.sha256)
            .where(Image.id.in_(list(image_ids)), Image.id.in_(_todo(version)))
            .order_by(Image.id)
        ).all()
        images = {
            row.id: _Image(row.id, row.job_id, os_path(row.path, row.path_raw), row.sha256, [])
            for row in found
        }
        first: dict[int, str] = {}
        landmarks = [getattr(FaceRow, f"{n}_{axis}") for n in LANDMARK_NAMES for axis in "xy"]
        query = (
            select(FaceRow.image_id, FaceRow.model_version, FaceRow.x, FaceRow.y, FaceRow.w)
            .add_columns(FaceRow.h, FaceRow.det_confidence, *landmarks)
            .where(FaceRow.image_id.in_(list(images)))
            .order_by(FaceRow.image_id, FaceRow.id)
        )
        for row in session.execute(query):
            image_id, model_version, x, y, w, h, score, *points = row
            if first.setdefault(image_id, model_version) != model_version:
                continue
            marks = np.asarray(points, np.float32).reshape(5, 2)
            images[image_id].faces.append(Face(box=(x, y, w, h), landmarks=marks, score=score))
    return list(images.values())


def _crops(image: _Image) -> None:
    """Decode the image as the pipeline does and align its faces; or record why not."""
    try:
        loaded = load_image(image.path, min_side=DECODE_SIDE)
    except ImageLoadError as exc:
        image.error_code, image.error = exc.reason, f"{exc.message} (at reclassify)"
        return
    if loaded.sha256 != image.sha256:
        image.error_code = CHANGED
        image.error = (
            f"the file changed since its faces were detected (sha256 {image.sha256} then, "
            f"{loaded.sha256} now); its earlier rows are kept; run `facegender run` on the "
            "folder to detect it again"
        )
        return
    image.crops = [align_face(loaded.pixels, f.landmarks * loaded.scale) for f in image.faces]


def _mark_error(session: Session, image: _Image) -> None:
    row = session.get(Image, image.id)
    assert row is not None
    row.status, row.error_code, row.error = ERROR, image.error_code, image.error
    row.processed_at = utcnow()
