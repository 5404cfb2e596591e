"""Rate and ETA of a job, from the `processed_at` times its images were written with."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from worker.db import Image
from worker.results import JobStatus

RATE_WINDOW_S = 60.0


@dataclass(frozen=True)
class Rate:
    """Images finished (done or error) per second, and the seconds left at that pace."""

    per_second: float | None
    eta_seconds: float | None


def job_rate(
    sessions: sessionmaker[Session],
    status: JobStatus,
    now: datetime | None = None,
    window_s: float = RATE_WINDOW_S,
) -> Rate:
    """Over the last `window_s` seconds while the job runs; over its whole life once finished."""
    now = now or datetime.now(UTC)
    created = _aware(status.created_at)
    finished = status.total - status.pending
    if status.pending == 0:
        last = status.finished_at or status.last_processed_at
        end = _aware(last) if last else now
        elapsed = (end - created).total_seconds()
        return Rate(finished / elapsed if finished and elapsed > 0 else None, 0.0)
    start = max(created, now - timedelta(seconds=window_s))
    with sessions() as session:
        recent = session.scalar(
            select(func.count()).where(Image.job_id == status.job_id, Image.processed_at >= start)
        )
    elapsed = (now - start).total_seconds()
    if not recent or elapsed <= 0:
        return Rate(None, None)
    per_second = recent / elapsed
    return Rate(per_second, status.pending / per_second)


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; they were written in UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
