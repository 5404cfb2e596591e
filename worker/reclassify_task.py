"""The Celery task for distributed reclassify: chunks of a job's image ids, JSON.

A chunk is {"job_id": int, "image_ids": [int, ...], "model": path or null,
"kind": "reclassify"}; "model" null means the worker's own model. Each pool
process keeps one classifier per model path; the detector is never used.
A chunk is safe to deliver twice: images with rows of the model are skipped.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.exceptions import Reject

from worker.app import app

log = logging.getLogger("facegender.worker")

TASK_NAME = "facegender.reclassify_chunk"
_classifiers: dict[str | None, Any] = {}


def _classifier(model: str | None) -> Any:
    """The worker's classifier for `model` (None: the one it loaded), loaded once per process."""
    from classifier import GenderClassifier
    from worker.tasks import load_process

    state = load_process()
    if model is None:
        return state.models.classifier
    if model not in _classifiers:
        settings = state.settings
        _classifiers[model] = GenderClassifier(
            model, batch_size=settings.classify_batch_size, backend=settings.backend
        )
    return _classifiers[model]


@app.task(name=TASK_NAME)
def reclassify_chunk(
    job_id: int, image_ids: list[int], model: str | None = None, kind: str = "reclassify"
) -> dict[str, int]:
    """Re-classify one chunk of a job's images; the rows in the database are the result."""
    if not (
        kind == "reclassify"
        and isinstance(job_id, int)
        and isinstance(image_ids, list)
        and all(isinstance(i, int) for i in image_ids)
        and (model is None or isinstance(model, str))
    ):
        raise Reject(f"malformed reclassify chunk: job_id={job_id!r}", requeue=False)
    from worker.reclassify import reclassify_images
    from worker.tasks import load_process

    report = reclassify_images(load_process().sessions, image_ids, _classifier(model))
    log.info(
        "job %d: reclassified %d images, %d faces, %d errors, %d skipped",
        job_id,
        report.images,
        report.faces,
        report.errors,
        report.skipped,
    )
    return {"images": report.images, "faces": report.faces, "errors": report.errors}


@contextmanager
def reclassify_sender(queue: str, model: str | None) -> Iterator[Any]:
    """A `send(job_id, image_ids)` that publishes reclassify chunks over one connection."""
    with app.producer_or_acquire() as producer:

        def send(job_id: int, image_ids: list[int]) -> None:
            reclassify_chunk.apply_async(
                kwargs={
                    "job_id": job_id,
                    "image_ids": image_ids,
                    "model": model,
                    "kind": "reclassify",
                },
                queue=queue,
                producer=producer,
                retry=True,
                time_limit=None,
            )

        yield send
