"""A real worker skips the queued chunks of a cancelled job and goes on with the next job."""

import shutil
from pathlib import Path

import pytest
import redis
from sqlalchemy import select
from test_distributed import cli, cluster, counts, enqueue, wait_for, wait_job_done

from worker.db import DONE, PENDING, Face, Image, make_engine

pytestmark = pytest.mark.services
__all__ = ["cluster"]  # the fixture, shared with test_distributed


def _folder(target: Path, files: list[Path]) -> Path:
    target.mkdir()
    for path in files:
        shutil.copy(path, target / path.name)
    return target


def test_a_cancelled_jobs_queued_chunks_are_skipped(
    cluster, tmp_path, utkface_files, postgres_url, redis_url
):
    cancelled = enqueue(_folder(tmp_path / "a", utkface_files[:20]), postgres_url, redis_url, 8)
    assert "20 pending images" in cli("cancel", str(cancelled), "--db", postgres_url)
    worker = cluster("w1")
    wait_for(
        lambda: worker.text().count(f"job {cancelled} is cancelled: skipping") == 3,
        180,
        "the three chunks to be skipped",
        worker,
    )
    assert redis.Redis.from_url(redis_url).llen("facegender") == 0
    assert counts(postgres_url, cancelled) == {DONE: 0, "error": 0, PENDING: 20}
    engine = make_engine(postgres_url)
    with engine.connect() as connection:
        claims = connection.execute(
            select(Image.claimed_by, Image.attempts).where(Image.job_id == cancelled)
        ).all()
        assert set(claims) == {(None, 0)}  # skipped before claiming: nothing charged
        assert connection.execute(select(Face.id).where(Face.job_id == cancelled)).first() is None
    engine.dispose()

    later = enqueue(_folder(tmp_path / "b", utkface_files[20:24]), postgres_url, redis_url, 8)
    wait_job_done(postgres_url, later, 120, worker)
    assert counts(postgres_url, later)[DONE] == 4
