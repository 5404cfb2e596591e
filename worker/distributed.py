"""Distributed mode as plain functions: cut a job into chunks, process a chunk, resume a job.

Nothing here knows about Celery: `send` is any callable that puts one chunk
on the queue, and `process_chunk` is what the task runs in a worker process.
A chunk is the JSON object {"job_id": int, "image_ids": [int, ...]}.
"""

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from worker.batch import BatchReport
from worker.db import CANCELLED, ERROR, PENDING, RUNNING, Image, Job
from worker.faults import TRANSIENT_ERROR_CODES, is_out_of_memory
from worker.jobs import (
    JobStateError,
    finish_if_complete,
    is_cancelled,
    mark_running,
    new_job,
    pending_after,
    record_unsure,
    register,
)
from worker.pipeline import Models, process_images
from worker.store import Claimant, release, retried_before

log = logging.getLogger("facegender.worker")

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
    sessions: sessionmaker[Session],
    root: Path,
    chunk_size: int,
    send: Send,
    unsure: tuple[float | None, float | None] = (None, None),
) -> tuple[int, int]:
    """A job for every image under `root`, sent in chunks; (job id, images sent).

    Chunks are sent while the folder is still being scanned, and both go page
    by page, so workers start at once and a folder of millions of files is
    queued in constant memory. `unsure` (unsure_below, min_eye_distance) fixes
    those given on the job before any chunk is sent; the others are the
    workers' model's.
    """
    if chunk_size < 1:
        raise ValueError("chunk size must be at least 1")
    job_id = new_job(sessions, root)
    record_unsure(sessions, job_id, *unsure)
    return job_id, _scan_and_send(
        sessions, job_id, root, _Sender(sessions, job_id, chunk_size, send)
    )


def resume_job(
    sessions: sessionmaker[Session], job_id: int, chunk_size: int, send: Send, errors: bool = False
) -> tuple[int, int]:
    """Send every image of the job that is still pending again; (images sent, errors reset).

    For messages that the broker lost (Redis flushed or restarted without
    persistence, a crashed enqueue). Safe at any time: a chunk sent twice is
    processed once, because a claim skips images that are done or held by a
    live lease, and a duplicate never counts an attempt against them.
    With `errors`, error rows whose code is transient (see
    worker.faults.TRANSIENT_ERROR_CODES) are made pending again first.
    """
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        if job.status == CANCELLED:
            raise JobStateError(f"job {job_id} is cancelled: start a new one with `enqueue`")
        root = None if job.scan_done else Path(job.root)
    reset = reset_transient_errors(sessions, job_id) if errors else 0
    sender = _Sender(sessions, job_id, chunk_size, send)
    if root is not None:  # `enqueue` died during its scan: finish it, sending as it goes
        return _scan_and_send(sessions, job_id, root, sender), reset
    sender.send_pending(whole_chunks_only=False)
    if not sender.images:
        finish_if_complete(sessions, job_id)
    return sender.images, reset


def reset_transient_errors(sessions: sessionmaker[Session], job_id: int) -> int:
    """Make the job's transient error rows pending again, fresh (no attempts); how many."""
    transient = and_(
        Image.job_id == job_id,
        Image.status == ERROR,
        Image.error_code.in_(sorted(TRANSIENT_ERROR_CODES)),
    )
    with sessions.begin() as session:
        reset = session.execute(
            update(Image)
            .where(transient)
            .values(
                status=PENDING,
                error_code=None,
                error=None,
                attempts=0,
                claimed_by=None,
                claimed_at=None,
                processed_at=None,
            )
            .returning(Image.id)
            .execution_options(synchronize_session=False)
        ).all()
        if reset:
            session.execute(
                update(Job).where(Job.id == job_id).values(status=RUNNING, finished_at=None)
            )
    return len(reset)


class _SendFailed(Exception):
    """The broker refused a chunk (wrapped, to tell it from a failing scan)."""


class _Sender:
    """Sends a job's pending images in chunks, in id order, each image once, page by page."""

    def __init__(
        self, sessions: sessionmaker[Session], job_id: int, chunk_size: int, send: Send
    ) -> None:
        self._sessions, self._job_id, self._size, self._send = sessions, job_id, chunk_size, send
        self._after = 0
        self.chunks = self.images = 0

    def send_pending(self, whole_chunks_only: bool) -> None:
        """Send what is pending past the last id sent (a short last chunk only if asked)."""
        while ids := pending_after(self._sessions, self._job_id, self._after, self._size):
            if whole_chunks_only and len(ids) < self._size:
                return
            if not self.chunks:
                mark_running(self._sessions, self._job_id)
            try:
                self._send(self._job_id, ids)
            except Exception as exc:
                raise _SendFailed() from exc
            self._after = ids[-1]
            self.chunks += 1
            self.images += len(ids)

    def chunks_left(self) -> int:
        with self._sessions() as session:
            pending = session.scalar(
                select(func.count()).where(
                    Image.job_id == self._job_id, Image.status == PENDING, Image.id > self._after
                )
            )
        return -(-(pending or 0) // self._size)


def _scan_and_send(
    sessions: sessionmaker[Session], job_id: int, root: Path, sender: _Sender
) -> int:
    """Register `root` into the job, sending whole chunks as they fill; images sent.

    If the broker fails, the scan still finishes (so that the job is whole and
    `resume` can send the rest), then EnqueueError says how many chunks went.
    """
    scan = register(sessions, job_id, root)
    try:
        for _ in scan:
            sender.send_pending(whole_chunks_only=True)
        sender.send_pending(whole_chunks_only=False)
    except _SendFailed as failed:
        for _ in scan:
            pass
        cause = failed.__cause__ or failed
        total = sender.chunks + sender.chunks_left()
        raise EnqueueError(job_id, sender.chunks, total, cause) from cause
    if not sender.images:
        finish_if_complete(sessions, job_id)
    return sender.images


class OutOfMemory(RuntimeError):
    """Images ran out of memory on their own: charged an attempt, to be tried again later."""


def process_chunk(
    sessions: sessionmaker[Session],
    job_id: int,
    image_ids: Sequence[int],
    models: Models,
    claimant: Claimant,
    reuse: bool = True,
) -> BatchReport:
    """Process one chunk, then mark the job done if this chunk was its last.

    A chunk comes back after its worker died, overran the time limit or
    raised. Its images then already have an attempt counted, and it is
    processed one image per transaction: only the image that kills the worker
    keeps gaining attempts (until it becomes a "gave_up" error row), while the
    others in its chunk complete instead of being given up with it. A chunk
    that runs out of memory is refunded and tried image by image the same way.
    A chunk of a cancelled job is skipped before anything is claimed.
    """
    if is_cancelled(sessions, job_id):
        log.info("job %d is cancelled: skipping a chunk of %d images", job_id, len(image_ids))
        return BatchReport(skipped=len(image_ids))
    if len(image_ids) > 1 and retried_before(sessions, image_ids, claimant):
        report = _one_by_one(sessions, image_ids, models, claimant, reuse)
    else:
        try:
            report = process_images(sessions, image_ids, models, claimant, reuse)
        except Exception as exc:
            if len(image_ids) == 1 or not is_out_of_memory(exc):
                raise
            log.warning("job %d: out of memory on a chunk, its images go alone: %s", job_id, exc)
            release(sessions, image_ids, claimant, refund=True)
            report = _one_by_one(sessions, image_ids, models, claimant, reuse)
    finish_if_complete(sessions, job_id)
    return report


def _one_by_one(
    sessions: sessionmaker[Session],
    image_ids: Sequence[int],
    models: Models,
    claimant: Claimant,
    reuse: bool = True,
) -> BatchReport:
    """Each image alone; one out of memory even alone is charged, released, raised at the end."""
    report, exhausted = BatchReport(), []
    for image_id in image_ids:
        try:
            report.add(process_images(sessions, [image_id], models, claimant, reuse))
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            release(sessions, [image_id], claimant, refund=False)
            exhausted.append(image_id)
    if exhausted:
        raise OutOfMemory(f"images {exhausted} ran out of memory on their own")
    return report
