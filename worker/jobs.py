"""Job creation and completion: a folder becomes one job row and one pending row per file."""

import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from worker.db import DONE, PENDING, RUNNING, Image, Job, utcnow

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


def scan_folder(root: Path) -> list[str]:
    """Absolute paths of every image-named entry under `root`, sorted.

    Anything named like an image becomes a row, even a directory or a broken
    link, so that it is reported as an error instead of silently skipped.
    Symlinked folders are not followed (no loops).
    """
    return sorted(str(path) for path in _walk(root.resolve()))


def _walk(folder: Path) -> Iterator[Path]:
    with os.scandir(folder) as entries:
        for entry in entries:
            path = Path(entry.path)
            if path.suffix.lower() in IMAGE_SUFFIXES:
                yield path
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(path)


def create_job(sessions: sessionmaker[Session], root: Path) -> int:
    """A job for every image under `root`, all pending; returns the job id."""
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    paths = scan_folder(root)
    with sessions.begin() as session:
        job = Job(root=str(root.resolve()), status=PENDING, image_count=len(paths))
        session.add(job)
        session.flush()
        if paths:
            session.execute(
                insert(Image),
                [{"job_id": job.id, "path": p, "status": PENDING, "attempts": 0} for p in paths],
            )
        return job.id


def pending_image_ids(sessions: sessionmaker[Session], job_id: int) -> list[int]:
    with sessions() as session:
        query = select(Image.id).where(Image.job_id == job_id, Image.status == PENDING)
        return list(session.scalars(query.order_by(Image.id)))


def mark_running(sessions: sessionmaker[Session], job_id: int) -> None:
    with sessions.begin() as session:
        session.execute(
            update(Job).where(Job.id == job_id, Job.status == PENDING).values(status=RUNNING)
        )


def finish_if_complete(sessions: sessionmaker[Session], job_id: int) -> bool:
    """Mark the job done once no image is pending; True when it is done."""
    with sessions.begin() as session:
        pending = session.scalar(
            select(func.count()).where(Image.job_id == job_id, Image.status == PENDING)
        )
        if pending:
            return False
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status != DONE)
            .values(status=DONE, finished_at=utcnow())
        )
        return True
