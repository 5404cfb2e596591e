"""Distributed mode as plain functions: cut a job into chunks, process a chunk, resume a job.

Nothing here knows about Celery: `send` is any callable that puts one chunk
on the queue, and `process_chunk` is what the task runs in a worker process.
A chunk is the JSON object {"job_id": int, "image_ids": [int, ...]}.
"""

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from worker.batch import BatchReport
from worker.db import PENDING, Image, Job
from worker.jobs import create_job, finish_if_complete, mark_running, pending_image_ids
from worker.pipeline import Models, process_images

Send = Callable[[int, list[int]], None]


class EnqueueError(RuntimeError):
    """The job exists in the database but not all of its chunks reached the broker."""

    def __init__(self, job_id: int, sent: int, total: int, cause: BaseException) -> None:
        super().__init__(
            f"job {job_id} was created but only {sent} of {total} chunks were queued ({cause}); "
            f"run `facegender resume {job_id}` once the broker is reachable"
        )
        self.job_id = job_id


def chunked(image_ids: Sequence[int], size: int) -> Iterator[list[int]]:
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    for start in range(0, len(image_ids), size):
        yield list(image_ids[start : start + size])


def enqueue_folder(
    sessions: sessionmaker[Session], root: Path, chunk_size: int, send: Send
) -> tuple[int, int]:
    """A job for every image under `root`, sent in chunks; (job id, images sent)."""
    job_id = create_job(sessions, root)
    return job_id, _send_pending(sessions, job_id, chunk_size, send)


def resume_job(sessions: sessionmaker[Session], job_id: int, chunk_size: int, send: Send) -> int:
    """Send every image of the job that is still pending again; how many were sent.

    For messages that the broker lost (Redis flushed or restarted without
    persistence, a crashed enqueue). Safe at any time: a chunk sent twice is
    processed once, because its images are done (and skipped) or locked.
    """
    with sessions() as session:
        if session.get(Job, job_id) is None:
            raise LookupError(f"no job {job_id}")
    return _send_pending(sessions, job_id, chunk_size, send)


def _send_pending(sessions: sessionmaker[Session], job_id: int, chunk_size: int, send: Send) -> int:
    ids = pending_image_ids(sessions, job_id)
    batches = list(chunked(ids, chunk_size))
    for sent, batch in enumerate(batches):
        try:
            send(job_id, batch)
        except Exception as exc:
            raise EnqueueError(job_id, sent, len(batches), exc) from exc
    if ids:
        mark_running(sessions, job_id)
    else:
        finish_if_complete(sessions, job_id)
    return len(ids)


def process_chunk(
    sessions: sessionmaker[Session],
    job_id: int,
    image_ids: Sequence[int],
    models: Models,
    max_attempts: int,
) -> BatchReport:
    """Process one chunk, then mark the job done if this chunk was its last.

    A chunk comes back after its worker died, overran the time limit or
    raised. Its pending images then already have an attempt counted, and it is
    processed one image per transaction: only the image that kills the worker
    keeps gaining attempts (until it becomes a "gave_up" error row), while the
    others in its chunk complete instead of being given up with it.
    """
    if len(image_ids) > 1 and _tried_before(sessions, image_ids):
        report = BatchReport()
        for image_id in image_ids:
            report.add(process_images(sessions, [image_id], models, max_attempts))
    else:
        report = process_images(sessions, image_ids, models, max_attempts)
    finish_if_complete(sessions, job_id)
    return report


def _tried_before(sessions: sessionmaker[Session], image_ids: Sequence[int]) -> bool:
    with sessions() as session:
        query = select(func.count()).where(
            Image.id.in_(image_ids), Image.status == PENDING, Image.attempts > 0
        )
        return bool(session.scalar(query))
