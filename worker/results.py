"""Read results back out of the database: per-face rows and per-job counts."""

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, sessionmaker

from worker.db import DONE, ERROR, PENDING, Face, Image, Job

RESULT_COLUMNS = (
    "job_id",
    "path",
    "status",
    "face_index",
    "x",
    "y",
    "w",
    "h",
    "det_confidence",
    "gender",
    "confidence",
    "model_version",
    "error",
)


def face_results(
    sessions: sessionmaker[Session],
    job_id: int | None = None,
    gender: str | None = None,
    min_confidence: float | None = None,
    include_empty: bool = False,
) -> list[dict[str, Any]]:
    """One row per face (and, with include_empty, per image with no face or an error)."""
    columns = [
        Image.job_id,
        Image.path,
        Image.status,
        Face.face_index,
        Face.x,
        Face.y,
        Face.w,
        Face.h,
        Face.det_confidence,
        Face.gender,
        Face.confidence,
        Face.model_version,
        Image.error,
    ]
    query = select(*columns).select_from(Image)
    query = query.outerjoin(Face, Face.image_id == Image.id) if include_empty else query.join(Face)
    if job_id is not None:
        query = query.where(Image.job_id == job_id)
    if gender is not None:
        query = query.where(Face.gender == gender)
    if min_confidence is not None:
        query = query.where(Face.confidence >= min_confidence)
    if not include_empty:
        query = query.where(Image.status == DONE)
    query = query.order_by(Image.job_id, Image.path, Face.face_index)
    with sessions() as session:
        return [dict(zip(RESULT_COLUMNS, row, strict=True)) for row in session.execute(query)]


@dataclass(frozen=True)
class JobStatus:
    job_id: int
    root: str
    status: str
    created_at: datetime
    finished_at: datetime | None
    total: int
    done: int
    error: int
    pending: int
    faces: int
    last_processed_at: datetime | None


def job_statuses(sessions: sessionmaker[Session], job_id: int | None = None) -> list[JobStatus]:
    """Counts per job (newest first), straight from the image and face rows."""
    image_counts = (
        select(
            Image.job_id,
            func.count().label("total"),
            func.sum(case((Image.status == DONE, 1), else_=0)).label("done"),
            func.sum(case((Image.status == ERROR, 1), else_=0)).label("error"),
            func.sum(case((Image.status == PENDING, 1), else_=0)).label("pending"),
            func.max(Image.processed_at).label("last"),
        )
        .group_by(Image.job_id)
        .subquery()
    )
    face_counts = select(Face.job_id, func.count().label("faces")).group_by(Face.job_id).subquery()
    query = (
        select(Job, image_counts, face_counts.c.faces)
        .outerjoin(image_counts, image_counts.c.job_id == Job.id)
        .outerjoin(face_counts, face_counts.c.job_id == Job.id)
        .order_by(Job.id.desc())
    )
    if job_id is not None:
        query = query.where(Job.id == job_id)
    with sessions() as session:
        return [
            JobStatus(
                job_id=row.Job.id,
                root=row.Job.root,
                status=row.Job.status,
                created_at=row.Job.created_at,
                finished_at=row.Job.finished_at,
                total=row.total or 0,
                done=row.done or 0,
                error=row.error or 0,
                pending=row.pending or 0,
                faces=row.faces or 0,
                last_processed_at=row.last,
            )
            for row in session.execute(query)
        ]


def status_json(status: JobStatus) -> dict[str, Any]:
    data = asdict(status)
    for key, value in data.items():
        if isinstance(value, datetime):
            data[key] = value.isoformat()
    return data


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_json(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps(list(rows), indent=2)
