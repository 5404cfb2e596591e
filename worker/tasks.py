"""The Celery task (thin) and the per-process set-up that loads the models once.

The worker's parent process only consumes messages; each pool process loads
TensorFlow, MTCNN and the classifier after the fork (`worker_process_init`),
so nothing of TensorFlow is ever shared across a fork.
"""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from celery import signals
from celery.exceptions import Reject

from worker.app import TASK_NAME, app
from worker.config import Settings

log = logging.getLogger("facegender.worker")


@dataclass
class _Process:
    settings: Settings
    sessions: Any
    models: Any


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
        from worker.runtime import configure_tensorflow

        configure_tensorflow(settings.tf_threads)
        if settings.tf_threads:
            import cv2

            cv2.setNumThreads(settings.tf_threads)
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


@app.task(
    name=TASK_NAME,
    bind=True,
    autoretry_for=(Exception,),
    dont_autoretry_for=(Reject,),
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=10,
)
def process_chunk(self: Any, job_id: int, image_ids: list[int]) -> dict[str, int]:
    """Process one chunk of a job's images; the rows in the database are the result."""
    if not (
        isinstance(job_id, int)
        and isinstance(image_ids, list)
        and all(isinstance(i, int) for i in image_ids)
    ):
        raise Reject(f"malformed chunk: job_id={job_id!r} image_ids={image_ids!r}", requeue=False)
    from worker.distributed import process_chunk as run_chunk

    state = load_process()
    started = time.perf_counter()
    report = run_chunk(state.sessions, job_id, image_ids, state.models, state.settings.max_attempts)
    log.info(
        "job %d: chunk of %d images: %d done, %d errors, %d faces, %d skipped in %.2fs",
        job_id,
        len(image_ids),
        report.done,
        report.errors,
        report.faces,
        report.skipped,
        time.perf_counter() - started,
    )
    return {"done": report.done, "errors": report.errors, "faces": report.faces}


@contextmanager
def chunk_sender(queue: str) -> Iterator[Any]:
    """A `send(job_id, image_ids)` that publishes chunks over one broker connection."""
    with app.producer_or_acquire() as producer:

        def send(job_id: int, image_ids: list[int]) -> None:
            process_chunk.apply_async(
                kwargs={"job_id": job_id, "image_ids": image_ids},
                queue=queue,
                producer=producer,
                retry=True,
                # No limit in the message: each worker applies its own task_time_limit.
                time_limit=None,
            )

        yield send
