"""Job lifecycle: a folder becomes one job row and, streamed in batches, one row per file.

The scan registers rows batch by batch (constant memory on any number of
files), so work can start on the first batch while the rest of the folder
is still being listed; `jobs.scan_done` stays False until the listing ends,
and a job is done only once its scan is done and nothing is pending.
Registering again (a continued job) adds only the files not yet known.
Housekeeping (cancel, delete) and the job's unsure thresholds live here too.
"""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.orm import Session, sessionmaker

from classifier.runtime.unsure import UnsureRule
from worker.db import CANCELLED, DONE, ERROR, PENDING, RUNNING, Face, Image, Job, utcnow
from worker.scan import Entry, scan, text_form

SCAN_BATCH = 1000
_INSERTS: dict[str, Callable[[Any], Any]] = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
}


def root_text(root: Path) -> str:
    """The text a job's root is stored (and found again) by."""
    return text_form(bytes(root.resolve()))[0]


def new_job(sessions: sessionmaker[Session], root: Path) -> int:
    """An empty job for `root` whose scan has not run yet; returns its id."""
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    with sessions.begin() as session:
        job = Job(root=root_text(root), status=PENDING, image_count=0, scan_done=False)
        session.add(job)
        session.flush()
        return job.id


def unfinished_job(sessions: sessionmaker[Session], root: Path) -> int | None:
    """The newest job for `root` that is neither done nor cancelled, if any."""
    with sessions() as session:
        query = (
            select(Job.id)
            .where(Job.root == root_text(root), Job.status.not_in((DONE, CANCELLED)))
            .order_by(Job.id.desc())
            .limit(1)
        )
        return session.scalar(query)


def reopen_for_scan(sessions: sessionmaker[Session], job_id: int) -> None:
    """Mark a continued job as being scanned again (new files may be found)."""
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(scan_done=False))


def register(
    sessions: sessionmaker[Session], job_id: int, root: Path, batch: int = SCAN_BATCH
) -> Iterator[int]:
    """Scan `root` into the job's rows, one transaction per `batch` entries.

    Yields the job's row count after each batch; once the scan ends, records
    the count, marks the scan done and finishes the job if nothing is pending.
    A folder that cannot be listed becomes an error row (`unreadable`).
    """
    with sessions() as session:
        count = _image_count(session, job_id)
    entries: list[Entry] = []
    for entry in scan(root):
        entries.append(entry)
        if len(entries) >= batch:
            count += _insert_new(sessions, job_id, entries)
            entries.clear()
            yield count
    if entries:
        count += _insert_new(sessions, job_id, entries)
        yield count
    with sessions.begin() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(scan_done=True, image_count=_image_count(session, job_id))
        )
    finish_if_complete(sessions, job_id)


def create_job(sessions: sessionmaker[Session], root: Path) -> int:
    """A job for every image under `root`, all pending, scan finished; returns the job id."""
    job_id = new_job(sessions, root)
    for _ in register(sessions, job_id, root):
        pass
    return job_id


def _image_count(session: Session, job_id: int) -> int:
    return session.scalar(select(func.count()).where(Image.job_id == job_id)) or 0


def _insert_new(sessions: sessionmaker[Session], job_id: int, entries: list[Entry]) -> int:
    """Insert the entries not yet in the job; returns how many were new."""
    now = utcnow()
    rows = [
        {
            "job_id": job_id,
            "path": e.path,
            "path_raw": e.path_raw,
            "status": ERROR if e.error_code else PENDING,
            "error_code": e.error_code,
            "error": e.error,
            "processed_at": now if e.error_code else None,
            "attempts": 0,
        }
        for e in entries
    ]
    with sessions.begin() as session:
        dialect = session.get_bind().dialect.name
        if dialect not in _INSERTS:  # other databases: a new job's rows are new anyway
            session.execute(insert(Image), rows)
            return len(rows)
        statement = (
            _INSERTS[dialect](Image)
            .on_conflict_do_nothing(index_elements=["job_id", "path"])
            .returning(Image.id)
        )
        return len(session.execute(statement, rows).all())


def pending_after(
    sessions: sessionmaker[Session], job_id: int, after: int, limit: int
) -> list[int]:
    """Up to `limit` ids of the job's pending images with an id above `after`, in order."""
    with sessions() as session:
        query = (
            select(Image.id)
            .where(Image.job_id == job_id, Image.status == PENDING, Image.id > after)
            .order_by(Image.id)
            .limit(limit)
        )
        return list(session.scalars(query))


def finished_count(sessions: sessionmaker[Session], job_id: int) -> tuple[int, int]:
    """(images finished, images registered) of a job."""
    with sessions() as session:
        total = _image_count(session, job_id)
        pending = session.scalar(
            select(func.count()).where(Image.job_id == job_id, Image.status == PENDING)
        )
        return total - (pending or 0), total


def mark_running(sessions: sessionmaker[Session], job_id: int) -> None:
    with sessions.begin() as session:
        session.execute(
            update(Job).where(Job.id == job_id, Job.status == PENDING).values(status=RUNNING)
        )


def finish_if_complete(sessions: sessionmaker[Session], job_id: int) -> bool:
    """Mark the job done once its scan is over and no image is pending; True when done."""
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        if job is None or not job.scan_done or job.status == CANCELLED:
            return False
        pending = session.scalar(
            select(func.count()).where(Image.job_id == job_id, Image.status == PENDING)
        )
        if pending:
            return False
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.not_in((DONE, CANCELLED)))
            .values(status=DONE, finished_at=utcnow())
        )
        return True


def job_unsure_rule(session: Session, job_id: int, fallback: UnsureRule) -> UnsureRule:
    """The unsure thresholds recorded on the job, recording `fallback`'s where none are yet.

    The first process to store a job's faces fixes its thresholds (those of
    `run --unsure-below`/`enqueue` come first), so every row of a job is
    flagged alike; the lock the update takes is only held on that first store.
    """
    below, eyes = session.execute(
        select(Job.unsure_below, Job.min_eye_distance).where(Job.id == job_id)
    ).one()
    if below is None or eyes is None:
        below, eyes = session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                unsure_below=func.coalesce(Job.unsure_below, fallback.unsure_below),
                min_eye_distance=func.coalesce(Job.min_eye_distance, fallback.min_eye_distance),
            )
            .returning(Job.unsure_below, Job.min_eye_distance)
        ).one()
    assert below is not None and eyes is not None  # coalesced with fallback's numbers
    return UnsureRule(below, eyes)


def record_unsure(
    sessions: sessionmaker[Session],
    job_id: int,
    unsure_below: float | None,
    min_eye_distance: float | None,
) -> None:
    """Fix the given thresholds on a job that has none yet (None leaves one to the model)."""
    values = {
        name: func.coalesce(getattr(Job, name), value)
        for name, value in (("unsure_below", unsure_below), ("min_eye_distance", min_eye_distance))
        if value is not None
    }
    if values:
        with sessions.begin() as session:
            session.execute(update(Job).where(Job.id == job_id).values(**values))


class JobStateError(ValueError):
    """A job that cannot take this action in its state; the message says why."""


def job_status(sessions: sessionmaker[Session], job_id: int) -> str:
    """The job's status; LookupError when there is no such job."""
    with sessions() as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
    if status is None:
        raise LookupError(f"no job {job_id}")
    return status


def is_cancelled(sessions: sessionmaker[Session], job_id: int) -> bool:
    with sessions() as session:
        return session.scalar(select(Job.status).where(Job.id == job_id)) == CANCELLED


def cancel_job(sessions: sessionmaker[Session], job_id: int) -> int:
    """Mark the job cancelled: nothing more of it is processed; returns its pending images.

    Workers skip its queued chunks and an embedded run stops after its batch
    in flight; finished rows stay. A done job cannot be cancelled.
    """
    with sessions.begin() as session:
        cancelled = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.not_in((DONE, CANCELLED)))
            .values(status=CANCELLED, finished_at=utcnow())
            .returning(Job.id)
        ).first()
        if cancelled is None:
            status = session.scalar(select(Job.status).where(Job.id == job_id))
            if status is None:
                raise LookupError(f"no job {job_id}")
            if status == DONE:
                raise JobStateError(f"job {job_id} is done: nothing left to cancel")
        pending = session.scalar(
            select(func.count()).where(Image.job_id == job_id, Image.status == PENDING)
        )
    return pending or 0


def delete_job(sessions: sessionmaker[Session], job_id: int) -> tuple[int, int]:
    """Delete the job with its image and face rows in one transaction; (images, faces) deleted.

    A job still pending or running must be cancelled first, so that no worker
    writes rows of it while (or after) it is deleted.
    """
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        if job.status in (PENDING, RUNNING):
            raise JobStateError(
                f"job {job_id} is {job.status}: run `facegender cancel {job_id}` first"
            )
        faces = _deleted(session.execute(delete(Face).where(Face.job_id == job_id)))
        images = _deleted(session.execute(delete(Image).where(Image.job_id == job_id)))
        session.execute(delete(Job).where(Job.id == job_id))
    return images, faces


def _deleted(result: Result[Any]) -> int:
    """Rows a DELETE removed (a DML statement's result is a CursorResult)."""
    return cast(CursorResult[Any], result).rowcount
