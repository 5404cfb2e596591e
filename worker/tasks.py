"""The Celery task (thin) and the per-process set-up that loads the models once.

The worker's parent process only consumes messages; each pool process loads
TensorFlow, MTCNN and the classifier after the fork (`worker_process_init`),
so nothing of TensorFlow is ever shared across a fork.
"""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from celery import signals
from celery.exceptions import Reject
from celery.utils.time import get_exponential_backoff_interval

from worker.app import TASK_NAME, app
from worker.config import Settings

log = logging.getLogger("facegender.worker")

# Retries of a failed chunk: 2, 4, 8 ... seconds (jittered), at most a minute apart, for
# about 1.5 hours of database or broker outage; an image is charged only as worker.faults says.
RETRY_BACKOFF, RETRY_BACKOFF_MAX, MAX_RETRIES = 2, 60, 100


@dataclass
class _Process:
    settings: Settings
    sessions: Any
    models: Any
    stamped: set[int] = field(default_factory=set)  # jobs whose provenance this process checked


_process: _Process | None = None


@signals.worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    load_process()


@signals.worker_process_shutdown.connect
def _on_process_shutdown(**_: Any) -> None:
    if _process is not None:
        _process.sessions.kw["bind"].dispose()


def load_process() -> _Process:
    """Configure TensorFlow, load and warm the models, open the database; once per process."""
    global _process
    if _process is None:
        started = time.perf_counter()
        settings = Settings()
        from sqlalchemy.orm import sessionmaker

        from worker.db import make_engine
        from worker.pipeline import Models
        from worker.runtime import configure_opencv, configure_tensorflow

        configure_tensorflow(settings.tf_threads)
        configure_opencv(settings)
        models = Models.from_settings(settings)
        models.load()
        _warm_up(models)
        sessions = sessionmaker(make_engine(settings.db_url), expire_on_commit=False)
        _process = _Process(settings=settings, sessions=sessions, models=models)
        log.info(
            "facegender: models loaded in %.1fs (model %s, %d TensorFlow threads)",
            time.perf_counter() - started,
            models.classifier.version,
            settings.tf_threads,
        )
    return _process


def _warm_up(models: Any) -> None:
    """Trace the networks once now, so the first chunk is not slowed (or timed out) by it."""
    import numpy as np

    models.detector.detect(np.zeros((200, 200, 3), np.uint8))
    models.classifier.predict(np.zeros((1, 224, 224, 3), np.uint8))


@app.task(name=TASK_NAME, bind=True, max_retries=MAX_RETRIES)
def process_chunk(
    self: Any,
    job_id: int,
    image_ids: list[int],
    refund: list[str] | None = None,
    reuse: bool = True,
) -> dict[str, int]:
    """Process one chunk of a job's images; the rows in the database are the result.

    `refund` (set only on retries) holds the nonces of this task's executions
    that infrastructure faults stopped, so their claims are re-taken uncharged.
    `reuse` False (`enqueue --no-reuse`) detects even known content (worker.reuse).
    """
    if not (
        isinstance(job_id, int)
        and isinstance(image_ids, list)
        and all(isinstance(i, int) for i in image_ids)
        and (refund is None or all(isinstance(n, str) for n in refund))
        and isinstance(reuse, bool)
    ):
        raise Reject(f"malformed chunk: job_id={job_id!r} image_ids={image_ids!r}", requeue=False)
    from worker.distributed import process_chunk as run_chunk
    from worker.provenance import stamp
    from worker.store import Claimant

    state = load_process()
    claimant = Claimant.from_settings(self.request.id, state.settings, refund or ())
    started = time.perf_counter()
    try:
        if job_id not in state.stamped:
            stamp(state.sessions, job_id, state.models)
            state.stamped.add(job_id)
        report = run_chunk(state.sessions, job_id, image_ids, state.models, claimant, reuse)
    except Exception as exc:
        raise _retry(self, exc, job_id, image_ids, claimant) from exc
    log.info(
        "job %d: chunk of %d images: %d done (%d reused), %d errors, %d faces, %d skipped in %.2fs",
        job_id,
        len(image_ids),
        report.done,
        report.reused,
        report.errors,
        report.faces,
        report.skipped,
        time.perf_counter() - started,
    )
    return {"done": report.done, "errors": report.errors, "faces": report.faces}


def _retry(
    task: Any, exc: Exception, job_id: int, image_ids: list[int], claimant: Any
) -> BaseException:
    """The chunk again later, with exponential back-off; an infrastructure fault is refunded.

    Any other failure (out of memory alone, a crash in the code) keeps the
    attempts its claim counted, so an image that always fails ends as
    "gave_up" instead of being retried forever.
    """
    from worker.faults import is_infrastructure

    infrastructure = is_infrastructure(exc)
    countdown = get_exponential_backoff_interval(
        RETRY_BACKOFF, task.request.retries, RETRY_BACKOFF_MAX, full_jitter=True
    )
    log.warning(
        "job %d: chunk failed (%s%s: %s); retry %d in %ds",
        job_id,
        "infrastructure, not charged: " if infrastructure else "",
        type(exc).__name__,
        exc,
        task.request.retries + 1,
        countdown,
    )
    # Every execution stopped by the infrastructure stays refunded: a claim may have been
    # made by any of them (one that failed before claiming left the earlier one's).
    refund = [*claimant.refunded, claimant.nonce] if infrastructure else list(claimant.refunded)
    kwargs = {**task.request.kwargs, "job_id": job_id, "image_ids": image_ids, "refund": refund}
    try:
        return task.retry(exc=exc, countdown=countdown, kwargs=kwargs, throw=False)
    except Reject as rejected:  # the broker refused the retry: put this message back instead
        return Reject(rejected.reason, requeue=True)


@contextmanager
def chunk_sender(queue: str, reuse: bool = True) -> Iterator[Any]:
    """A `send(job_id, image_ids)` that publishes chunks over one broker connection."""
    options = {} if reuse else {"reuse": False}
    with app.producer_or_acquire() as producer:

        def send(job_id: int, image_ids: list[int]) -> None:
            process_chunk.apply_async(
                kwargs={"job_id": job_id, "image_ids": image_ids, **options},
                queue=queue,
                producer=producer,
                retry=True,
                # No limit in the message: each worker applies its own task_time_limit.
                time_limit=None,
            )

        yield send
