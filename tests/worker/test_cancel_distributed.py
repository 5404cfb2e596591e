"""A real worker skips the queued chunks of a cancelled job and goes on with the next job."""

import shutil
from pathlib import Path

import pytest
import redis
from sqlalchemy import select
from test_distributed import cli, cluster, counts, enqueue, wait_for, wait_job_done

from classifier.runtime import read_metadata
from worker.db import DONE, PENDING, Face, Image, Job, make_engine

pytestmark = pytest.mark.services
__all__ = ["cluster"]  # the fixture, shared with test_distributed


def _folder(target: Path, files: list[Path]) -> Path:
    target.mkdir()
    for path in files:
        shutil.copy(path, target / path.name)
    return target


def test_a_cancelled_jobs_queued_chunks_are_skipped(
    cluster, tmp_path, utkface_files, postgres_url, redis_url, model_path
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

    # The next job runs; the threshold given to enqueue is the one its faces are flagged by.
    later_folder = _folder(tmp_path / "b", utkface_files[20:24])
    later = int(
        cli(
            "enqueue", str(later_folder), "--db", postgres_url, "--broker", redis_url,
            "--unsure-below", "1",
        )
    )  # fmt: skip
    wait_job_done(postgres_url, later, 120, worker)
    assert counts(postgres_url, later)[DONE] == 4
    engine = make_engine(postgres_url)
    with engine.connect() as connection:
        job = connection.execute(select(Job).where(Job.id == later)).one()
        flags = connection.scalars(select(Face.unsure).where(Face.job_id == later)).all()
    engine.dispose()
    model = read_metadata(model_path)
    assert (job.unsure_below, job.min_eye_distance) == (1, model.min_eye_distance)
    assert len(flags) >= 4 and all(flags)
