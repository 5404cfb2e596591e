"""`facegender jobs`, `cancel` and `delete` on real databases, and a cancelled embedded run."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from worker.cli import main
from worker.db import CANCELLED, DONE, PENDING, Face, Image, Job, open_database
from worker.distributed import resume_job
from worker.embedded import run_folder, run_job
from worker.jobs import JobStateError, cancel_job, create_job


@pytest.fixture
def folder(tmp_path: Path, utkface_files: list[Path]) -> Path:
    target = tmp_path / "photos"
    target.mkdir()
    for path in utkface_files[:6]:
        shutil.copy(path, target / path.name)
    return target


def _count(sessions, table, job_id: int) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(table).where(table.job_id == job_id))


def test_jobs_cancel_delete(db_url, folder, models):
    sessions = open_database(db_url)
    done_job, _ = run_folder(sessions, folder, models, batch_size=6)
    queued = create_job(sessions, folder)  # as `enqueue` leaves it: every image pending
    runner = CliRunner()

    out = runner.invoke(main, ["jobs", "--db", db_url])
    assert out.exit_code == 0, out.output
    header, newest, oldest = out.output.splitlines()
    assert header.split()[:6] == ["job", "status", "done", "error", "pending", "faces"]
    assert newest.split()[:6] == [str(queued), "pending", "0", "0", "6", "0"]
    assert oldest.split()[:6] == [str(done_job), "done", "6", "0", "0", "6"]
    assert oldest.endswith(str(folder.resolve()))
    listed = json.loads(runner.invoke(main, ["jobs", "--db", db_url, "--format", "json"]).output)
    assert [j["job_id"] for j in listed] == [queued, done_job]

    out = runner.invoke(main, ["delete", str(queued), "--yes", "--db", db_url])
    assert out.exit_code == 1 and f"run `facegender cancel {queued}` first" in out.output
    out = runner.invoke(main, ["cancel", str(done_job), "--db", db_url])
    assert (
        out.exit_code == 1
        and out.output == f"Error: job {done_job} is done: nothing left to cancel\n"
    )
    out = runner.invoke(main, ["cancel", "999", "--db", db_url])
    assert out.exit_code == 1 and out.output == "Error: no job 999\n"
    out = runner.invoke(main, ["cancel", str(queued), "--db", db_url])
    assert out.exit_code == 0 and "6 pending images will not be processed" in out.output
    with sessions() as session:
        assert session.get(Job, queued).status == CANCELLED
    sent: list = []
    with pytest.raises(JobStateError, match=f"job {queued} is cancelled"):
        resume_job(sessions, queued, 8, lambda job, ids: sent.append(ids), errors=True)
    assert sent == []

    out = runner.invoke(main, ["delete", str(done_job), "--db", db_url], input="n\n")
    assert out.exit_code == 1 and _count(sessions, Face, done_job) == 6  # declined: kept
    out = runner.invoke(main, ["delete", str(done_job), "--db", db_url], input="y\n")
    assert out.exit_code == 0 and "6 image rows, 6 face rows" in out.output
    assert _count(sessions, Face, done_job) == _count(sessions, Image, done_job) == 0
    with sessions() as session:
        assert session.get(Job, done_job) is None
        assert session.get(Job, queued) is not None  # the other job is untouched
    assert _count(sessions, Image, queued) == 6
    out = runner.invoke(main, ["delete", str(done_job), "--yes", "--db", db_url])
    assert out.exit_code == 1 and out.output == f"Error: no job {done_job}\n"


def test_a_run_stops_between_batches_once_its_job_is_cancelled(sqlite_url, folder, models):
    """Cancelled from elsewhere (its own sessions, as another shell would) after the first batch."""
    sessions, elsewhere = open_database(sqlite_url), open_database(sqlite_url)
    job_id = create_job(sessions, folder)
    batches = []

    def cancel_after_first(_report, count: int) -> None:
        batches.append(count)
        if len(batches) == 1:
            cancel_job(elsewhere, job_id)

    totals, done = run_job(
        sessions, job_id, folder, models, batch_size=1, on_batch=cancel_after_first
    )
    assert not done
    with sessions() as session:
        assert session.get(Job, job_id).status == CANCELLED
        statuses = session.scalars(select(Image.status).where(Image.job_id == job_id)).all()
    # The batch in flight when the job was cancelled may finish; nothing after it starts.
    assert statuses.count(DONE) == totals.done <= 3
    assert statuses.count(PENDING) >= 3


IMAGES = 200


def test_facegender_run_stops_when_cancelled_from_another_shell(
    sqlite_url, tmp_path, utkface_files, model_path
):
    folder = tmp_path / "many"
    folder.mkdir()
    for path in utkface_files[:IMAGES]:
        shutil.copy(path, folder / path.name)
    facegender = str(Path(sys.executable).with_name("facegender"))
    env = {**os.environ, "FACEGENDER_MODEL": str(model_path)}
    run = subprocess.Popen(
        [facegender, "run", str(folder), "--db", sqlite_url, "--batch-size", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sessions = open_database(sqlite_url)
    deadline = time.monotonic() + 120
    while _done(sessions) < 2:  # started processing
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.2)
    cancel_job(sessions, 1)  # from this process: another shell, to the run
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 1
    assert "Error: job 1 was cancelled with " in stderr
    assert _done(sessions) < IMAGES  # it stopped instead of finishing the folder


def _done(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).where(Image.status == DONE)) or 0
