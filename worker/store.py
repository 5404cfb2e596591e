"""The database side of processing a batch: claim pending images, store their results.

Claims and stores are what make redelivery safe: an image is claimed and
finished in transactions of its own, and a finished image is never written
again.
"""

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from classifier import Prediction
from detector.faces import LANDMARK_NAMES
from worker.batch import BatchReport, WorkItem
from worker.db import DONE, ERROR, PENDING, Image, utcnow
from worker.db import Face as FaceRow


def claim(
    sessions: sessionmaker[Session],
    image_ids: Sequence[int],
    max_attempts: int,
    report: BatchReport,
) -> list[WorkItem]:
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
            work.append(WorkItem(image_id=row.id, job_id=row.job_id, path=row.path))
    return work


def store(
    sessions: sessionmaker[Session],
    work: list[WorkItem],
    owners: list[tuple[int, int]],
    predictions: list[Prediction],
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
            if item.decoded:
                row.sha256, row.width, row.height = item.sha256, item.width, item.height
            if item.error_code:
                row.status, row.error_code, row.error = ERROR, item.error_code, item.error
                report.errors += 1
                continue
            row.status, row.face_count = DONE, len(item.faces)
            report.done += 1
            for face_index, prediction in by_work[index]:
                face_rows.append(
                    face_row(item, face_index, prediction, model_version)  # type: ignore[arg-type]
                )
        if face_rows:
            session.execute(insert(FaceRow), face_rows)
        report.faces += len(face_rows)


def face_row(item: WorkItem, face_index: int, prediction, model_version: str) -> dict[str, object]:
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
