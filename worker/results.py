"""Read results back out of the database: per-face rows (streamed) and per-job counts.

`iter_results` never holds more than a page of rows, so `facegender results`
runs in constant memory on any number of faces. Its filters select face
rows; `include_empty` adds one row for every image of the selected jobs that
has no face row (no face found, an error, or not processed yet), whatever
the face filters, because those images have no gender or confidence to
filter on.
"""

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, null, select, union_all
from sqlalchemy.orm import Session, aliased, sessionmaker

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
    "unsure",
    "model_version",
    "error",
)
UNSURE_FILTERS = ("all", "only", "exclude")
PROVENANCE_COLUMNS = ("model_version", "backend", "detector_settings", "runtime", "package_version")
_PAGE = 1000


def iter_results(
    sessions: sessionmaker[Session],
    job_id: int | None = None,
    gender: str | None = None,
    min_confidence: float | None = None,
    include_empty: bool = False,
    unsure: str = "all",
    model_version: str | None = None,
) -> Iterator[dict[str, Any]]:
    """One row per face (and, with include_empty, per image without one), by job and path.

    `unsure` (UNSURE_FILTERS): "only" the faces flagged unsure, or "exclude" them.
    `model_version`: that model's rows; by default each image's newest (see _newest_version).
    """
    faces = select(
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
        Face.unsure,
        Face.model_version,
        Image.error,
    ).join(Face, Face.image_id == Image.id)
    if gender is not None:
        faces = faces.where(Face.gender == gender)
    if min_confidence is not None:
        faces = faces.where(Face.confidence >= min_confidence)
    if unsure != "all":
        faces = faces.where(Face.unsure.is_(unsure == "only"))
    if job_id is not None:
        faces = faces.where(Image.job_id == job_id)
    faces = faces.where(Face.model_version == model_version if model_version else _newest_version())
    if not include_empty:
        ordered = faces.order_by(Image.job_id, Image.path, Face.face_index)
    else:
        faceless = select(
            Image.job_id,
            Image.path,
            Image.status,
            *[null()] * 10,
            Image.error,
        ).where(~select(Face.id).where(Face.image_id == Image.id).exists())
        if job_id is not None:
            faceless = faceless.where(Image.job_id == job_id)
        both = union_all(faces, faceless).subquery()
        ordered = select(both).order_by(*(both.c[i] for i in (0, 1, 3)))
    with sessions() as session:
        rows = session.execute(ordered, execution_options={"yield_per": _PAGE})
        for row in rows:
            yield dict(zip(RESULT_COLUMNS, row, strict=True))


def _newest_version():
    """The face row's image has no row written later (ids only grow) by another model version.

    An image holds rows of several model versions after `reclassify`; by
    default each image shows those of its newest, so an image not yet
    re-classified still shows its earlier model's rows. (An anti-join on the
    image's few rows, not an ORDER BY id LIMIT 1, which PostgreSQL may plan as
    a scan of the whole table per row.)
    """
    later = aliased(Face)
    return ~(
        select(later.id)
        .where(
            later.image_id == Face.image_id,
            later.id > Face.id,
            later.model_version != Face.model_version,
        )
        .correlate(Face)
        .exists()
    )


@dataclass(frozen=True)
class JobStatus:
    job_id: int
    root: str
    status: str
    created_at: datetime
    finished_at: datetime | None
    scan_done: bool
    total: int
    done: int
    error: int
    pending: int
    faces: int
    last_processed_at: datetime | None
    model_version: str | None
    backend: str | None
    detector_settings: str | None
    runtime: str | None
    package_version: str | None


def job_statuses(sessions: sessionmaker[Session], job_id: int | None = None) -> list[JobStatus]:
    """Counts per job (newest first), straight from the image rows.

    `faces` sums the done images' face counts: each face once, however many
    model versions (`reclassify`) have rows for it.
    """
    image_counts = (
        select(
            Image.job_id,
            func.count().label("total"),
            func.sum(case((Image.status == DONE, 1), else_=0)).label("done"),
            func.sum(case((Image.status == ERROR, 1), else_=0)).label("error"),
            func.sum(case((Image.status == PENDING, 1), else_=0)).label("pending"),
            func.max(Image.processed_at).label("last"),
            func.sum(case((Image.status == DONE, Image.face_count), else_=0)).label("faces"),
        )
        .group_by(Image.job_id)
        .subquery()
    )
    query = (
        select(Job, image_counts)
        .outerjoin(image_counts, image_counts.c.job_id == Job.id)
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
                scan_done=row.Job.scan_done,
                total=row.total or 0,
                done=row.done or 0,
                error=row.error or 0,
                pending=row.pending or 0,
                faces=row.faces or 0,
                last_processed_at=row.last,
                **{column: getattr(row.Job, column) for column in PROVENANCE_COLUMNS},
            )
            for row in session.execute(query)
        ]


def status_json(status: JobStatus) -> dict[str, Any]:
    """A job's status as JSON values; its JSON-text provenance columns parsed."""
    data = asdict(status)
    for key, value in data.items():
        if isinstance(value, datetime):
            data[key] = value.isoformat()
    for key in ("detector_settings", "runtime"):
        data[key] = _parsed(data[key])
    return data


def provenance_json(status: JobStatus) -> dict[str, Any]:
    """What produced a job's rows, for `results --format json`."""
    data = status_json(status)
    return {"job_id": status.job_id, "root": status.root} | {
        key: data[key] for key in PROVENANCE_COLUMNS
    }


def _parsed(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
