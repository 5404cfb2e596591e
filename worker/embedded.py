"""The in-process runner behind `facegender run`: no broker, one process, any database.

A run continues the newest unfinished job for the same folder (what a
Ctrl-C or a crash left behind) instead of starting from zero, and starts
processing the first registered files while the rest of the folder is
still being scanned.
"""

import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from worker.batch import BatchReport
from worker.jobs import (
    finish_if_complete,
    is_cancelled,
    mark_running,
    new_job,
    pending_after,
    register,
    reopen_for_scan,
    unfinished_job,
)
from worker.pipeline import Models, process_batches
from worker.provenance import stamp
from worker.store import Claimant


def open_job(sessions: sessionmaker[Session], root: Path) -> tuple[int, bool]:
    """(job id, continued): the newest unfinished, uncancelled job for `root`, else a new one."""
    job_id = unfinished_job(sessions, root)
    if job_id is None:
        return new_job(sessions, root), False
    reopen_for_scan(sessions, job_id)
    return job_id, True


def run_job(
    sessions: sessionmaker[Session],
    job_id: int,
    root: Path,
    models: Models,
    batch_size: int,
    max_attempts: int = 3,
    on_batch: Callable[[BatchReport, int], None] | None = None,
    on_registered: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    reuse: bool = True,
) -> tuple[BatchReport, bool]:
    """Scan `root` into the job while processing its pending images; (totals, job done).

    When `stop` is set, no new batch starts: the batches in flight are
    finished and stored, and the rest stays pending for the next run. A job
    cancelled meanwhile (`facegender cancel`, any shell) stops the same way.
    `reuse` copies the rows of files already done elsewhere (worker.reuse).
    """
    mark_running(sessions, job_id)
    stamp(sessions, job_id, models)  # what makes this job's rows (first run wins)
    sizes: deque[int] = deque()
    batches = _batches(sessions, job_id, root, batch_size, sizes, on_registered, stop)
    totals = BatchReport()
    claimant = Claimant.embedded(job_id, max_attempts)
    for report in process_batches(sessions, batches, models, claimant, reuse):
        totals.add(report)
        count = sizes.popleft()
        if on_batch:
            on_batch(report, count)
    return totals, finish_if_complete(sessions, job_id)


def run_folder(
    sessions: sessionmaker[Session],
    root: Path,
    models: Models,
    batch_size: int,
    max_attempts: int = 3,
    on_batch: Callable[[BatchReport, int], None] | None = None,
    reuse: bool = True,
) -> tuple[int, BatchReport]:
    """Open (or continue) the job for `root` and run it to the end; (job id, totals)."""
    job_id, _ = open_job(sessions, root)
    totals, _ = run_job(
        sessions, job_id, root, models, batch_size, max_attempts, on_batch, reuse=reuse
    )
    return job_id, totals


def _batches(
    sessions: sessionmaker[Session],
    job_id: int,
    root: Path,
    size: int,
    sizes: deque[int],
    on_registered: Callable[[int], None] | None,
    stop: threading.Event | None,
) -> Iterator[list[int]]:
    """Pending ids `size` at a time, registering another scan batch whenever too few are left.

    Ids only grow, so `after` (the last id handed out) means nothing is handed
    out twice; pending rows left by an earlier run come first.
    """
    scanning: Iterator[int] | None = register(sessions, job_id, root)
    after = 0
    while not (stop and stop.is_set()) and not is_cancelled(sessions, job_id):
        ids = pending_after(sessions, job_id, after, size)
        if len(ids) < size and scanning is not None:
            count = next(scanning, None)
            if count is None:
                scanning = None
            elif on_registered:
                on_registered(count)
            continue
        if not ids:
            return
        after = ids[-1]
        sizes.append(len(ids))
        yield ids
