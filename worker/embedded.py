"""The in-process runner behind `facegender run`: no broker, one process, any database."""

from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from worker.batch import BatchReport
from worker.jobs import create_job, finish_if_complete, mark_running, pending_image_ids
from worker.pipeline import Models, process_batches


def run_folder(
    sessions: sessionmaker[Session],
    root: Path,
    models: Models,
    batch_size: int,
    max_attempts: int = 3,
    on_batch: Callable[[BatchReport, int], None] | None = None,
) -> tuple[int, BatchReport]:
    """Create a job for `root`, process it batch by batch; returns (job id, totals).

    Batches go through `process_batches`, so one batch is stored while the
    next is already being decoded and detected; each is still one claim and
    one store transaction.
    """
    job_id = create_job(sessions, root)
    ids = pending_image_ids(sessions, job_id)
    mark_running(sessions, job_id)
    totals = BatchReport()
    chunks = [ids[start : start + batch_size] for start in range(0, len(ids), batch_size)]
    for chunk, report in zip(
        chunks, process_batches(sessions, chunks, models, max_attempts), strict=True
    ):
        totals.add(report)
        if on_batch:
            on_batch(report, len(chunk))
    finish_if_complete(sessions, job_id)
    return job_id, totals
