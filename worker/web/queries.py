"""The browser's reads: a keyset page of faces, one image with its faces, export rows, jobs.

Every page is one indexed query bounded by its page size: the gallery walks
ix_faces_confidence from a key, never skipping rows with OFFSET, so page
1000 costs what page 1 costs.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from worker.db import DONE, ERROR, PENDING, Face, Image, Job
from worker.web.filters import Filters, Key

EXPORT_COLUMNS = (
    "face_id",
    "job_id",
    "image_id",
    "path",
    "face_index",
    "x",
    "y",
    "w",
    "h",
    "det_confidence",
    "gender",
    "confidence",
    "p_female",
    "unsure",
    "model_version",
)


@dataclass(frozen=True)
class Page:
    """One gallery page in review order, with the keys of its neighbours (None: no such page)."""

    faces: list[Any]
    next_key: Key | None
    prev_key: Key | None


def gallery_page(
    sessions: sessionmaker[Session],
    filters: Filters,
    size: int,
    after: Key | None = None,
    before: Key | None = None,
) -> Page:
    """`size` faces from `after` (or up to `before`), lowest confidence first."""
    query = (
        select(
            Face.id,
            Face.image_id,
            Face.job_id,
            Face.gender,
            Face.confidence,
            Face.unsure,
            Face.model_version,
            Image.path,
        )
        .join(Image, Image.id == Face.image_id)
        .where(*filters.conditions())
        .limit(size + 1)
    )
    backwards = before is not None and after is None
    if backwards:
        assert before is not None
        query = query.where(before.before()).order_by(Face.confidence.desc(), Face.id.desc())
    else:
        if after is not None:
            query = query.where(after.after())
        query = query.order_by(Face.confidence, Face.id)
    with sessions() as session:
        rows = list(session.execute(query))
    more = len(rows) > size
    rows = rows[:size]
    if backwards:
        rows.reverse()
    first = _key(rows[0]) if rows else None
    last = _key(rows[-1]) if rows else None
    if backwards:
        return Page(rows, next_key=last, prev_key=first if more else None)
    return Page(rows, next_key=last if more else None, prev_key=first if after else None)


def _key(row: Any) -> Key:
    return Key(row.confidence, row.id)


def export_rows(sessions: sessionmaker[Session], filters: Filters) -> Iterator[dict[str, Any]]:
    """Every face of the filter in review order, streamed from the database."""
    query = (
        select(
            Face.id.label("face_id"),
            Face.job_id,
            Face.image_id,
            Image.path,
            *(getattr(Face, c) for c in EXPORT_COLUMNS[4:]),
        )
        .join(Image, Image.id == Face.image_id)
        .where(*filters.conditions())
        .order_by(Face.confidence, Face.id)
    )
    with sessions() as session:
        for row in session.execute(query, execution_options={"yield_per": 1000}):
            yield row._asdict()


@dataclass(frozen=True)
class ImageView:
    image: Image
    root: str
    faces: list[Face]
    versions: list[str]
    version: str | None


def image_view(
    sessions: sessionmaker[Session], image_id: int, version: str | None
) -> ImageView | None:
    """An image, its job's root and its faces under `version` (default: the newest rows')."""
    with sessions() as session:
        found = session.execute(
            select(Image, Job.root).join(Job, Job.id == Image.job_id).where(Image.id == image_id)
        ).first()
        if found is None:
            return None
        image, root = found
        newest = func.max(Face.id)
        versions = [
            v
            for v, _ in session.execute(
                select(Face.model_version, newest)
                .where(Face.image_id == image_id)
                .group_by(Face.model_version)
                .order_by(newest.desc())
            )
        ]
        chosen = version if version in versions else (versions[0] if versions else None)
        faces = list(
            session.scalars(
                select(Face)
                .where(Face.image_id == image_id, Face.model_version == chosen)
                .order_by(Face.face_index)
            )
        )
    return ImageView(image, root, faces, versions, chosen)


@dataclass(frozen=True)
class FaceSource:
    """What a thumbnail needs: the face's box and its file, with the job's root to check it."""

    box: tuple[float, float, float, float]
    path: str
    path_raw: bytes | None
    root: str
    longest: int | None  # the original's longer side, so that big photos decode reduced


def face_source(sessions: sessionmaker[Session], face_id: int) -> FaceSource | None:
    query = (
        select(
            Face.x,
            Face.y,
            Face.w,
            Face.h,
            Image.path,
            Image.path_raw,
            Image.width,
            Image.height,
            Job.root,
        )
        .join(Image, Image.id == Face.image_id)
        .join(Job, Job.id == Image.job_id)
        .where(Face.id == face_id)
    )
    with sessions() as session:
        row = session.execute(query).first()
    if row is None:
        return None
    longest = max(row.width, row.height) if row.width and row.height else None
    return FaceSource((row.x, row.y, row.w, row.h), row.path, row.path_raw, row.root, longest)


@dataclass(frozen=True)
class JobProgress:
    job_id: int
    root: str
    status: str
    scan_done: bool
    model_version: str | None
    total: int
    done: int
    error: int
    pending: int
    faces: int


def job_progress(sessions: sessionmaker[Session]) -> list[JobProgress]:
    """Every job (newest first) with its image counts, from one pass over the image rows.

    Faces are the images' face counts (each face once, whatever the number
    of model versions that classified it): summing them reads 100,000 image
    rows where counting face rows would read a million.
    """
    counts = (
        select(
            Image.job_id,
            func.count().label("total"),
            *(
                func.count().filter(Image.status == status).label(status)
                for status in (DONE, ERROR, PENDING)
            ),
            func.coalesce(func.sum(Image.face_count), 0).label("faces"),
        )
        .group_by(Image.job_id)
        .subquery()
    )
    query = (
        select(Job.id, Job.root, Job.status, Job.scan_done, Job.model_version, counts)
        .outerjoin(counts, counts.c.job_id == Job.id)
        .order_by(Job.id.desc())
    )
    with sessions() as session:
        return [
            JobProgress(
                row.id,
                row.root,
                row.status,
                row.scan_done,
                row.model_version,
                *(row._mapping[c] or 0 for c in ("total", DONE, ERROR, PENDING, "faces")),
            )
            for row in session.execute(query)
        ]


def job_choices(sessions: sessionmaker[Session]) -> tuple[list[Any], list[str]]:
    """(id, root) of every job, and the model versions the jobs record, for the filter form."""
    with sessions() as session:
        jobs = list(session.execute(select(Job.id, Job.root).order_by(Job.id.desc())))
        versions = session.scalars(
            select(Job.model_version)
            .where(Job.model_version.is_not(None))
            .distinct()
            .order_by(Job.model_version)
        )
        return jobs, [v for v in versions if v]
