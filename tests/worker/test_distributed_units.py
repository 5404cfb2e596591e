"""Distributed mode's plain parts, without a broker: config, chunking, resume, rate and ETA."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from worker.app import celery_config
from worker.cli import main
from worker.config import Settings
from worker.db import DONE, PENDING, Image, Job, open_database
from worker.distributed import EnqueueError, chunked, enqueue_folder, resume_job
from worker.progress import format_eta, job_rate
from worker.results import job_statuses


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Ten image-named files: enough to cut into chunks (nothing here decodes them)."""
    root = tmp_path / "photos"
    root.mkdir()
    for index in range(10):
        (root / f"{index:02d}.jpg").write_bytes(b"not decoded in these tests")
    return root


def test_config_is_json_only_with_late_acks_and_no_result_backend():
    config = celery_config(Settings(task_time_limit=60, visibility_timeout=90))
    assert config["task_serializer"] == config["result_serializer"] == "json"
    assert config["accept_content"] == ["json"]
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["task_acks_on_timeout"] is False  # a chunk killed by the time limit comes back
    assert config["worker_prefetch_multiplier"] == 1
    assert config["result_backend"] is None and config["task_ignore_result"]
    assert config["task_time_limit"] == 60
    assert config["broker_transport_options"]["visibility_timeout"] == 90


def test_the_task_resolves_the_options_delivery_relies_on():
    """As Celery resolves them on the bound task: settings a Celery too old to know vanish."""
    from worker.app import app
    from worker.tasks import process_chunk

    task = app.tasks[process_chunk.name]
    assert task.acks_late is True
    assert task.reject_on_worker_lost is True  # a dead pool process: its chunk comes back
    assert task.retry_on_worker_lost is False  # ... at once, not as a counted retry
    assert task.acks_on_timeout is False  # a chunk killed by the time limit comes back
    assert task.acks_on_failure is True
    assert task.time_limit == Settings().task_time_limit
    assert task.max_retries == 100
    assert task.serializer == "json" and task.ignore_result is True
    conf = app.conf
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"] and conf.result_serializer == "json"
    assert conf.worker_proc_alive_timeout == 300.0
    assert conf.broker_transport_options["unacked_restore_interval"] >= 1
    assert Settings().visibility_timeout > task.time_limit


def test_visibility_timeout_must_outlast_the_time_limit():
    with pytest.raises(ValueError, match="VISIBILITY_TIMEOUT"):
        celery_config(Settings(task_time_limit=600, visibility_timeout=600))


def test_chunks_cover_every_id_once():
    assert list(chunked([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]
    with pytest.raises(ValueError):
        list(chunked([1], 0))


def test_enqueue_sends_json_chunks_and_resume_sends_only_what_is_pending(folder, sqlite_url):
    sessions = open_database(sqlite_url)
    sent: list[str] = []

    def send(job_id: int, image_ids: list[int]) -> None:
        sent.append(json.dumps({"job_id": job_id, "image_ids": image_ids}))

    job_id, count = enqueue_folder(sessions, folder, 4, send)
    chunks = [json.loads(message) for message in sent]
    assert count == 10 and [len(c["image_ids"]) for c in chunks] == [4, 4, 2]
    assert {c["job_id"] for c in chunks} == {job_id}
    ids = [i for c in chunks for i in c["image_ids"]]
    assert len(set(ids)) == 10

    with sessions.begin() as session:  # 7 images finished meanwhile
        session.execute(update(Image).where(Image.id.in_(ids[:7])).values(status=DONE))
    sent.clear()
    assert resume_job(sessions, job_id, 4, send) == (3, 0)
    assert [json.loads(m)["image_ids"] for m in sent] == [ids[7:]]

    with sessions.begin() as session:
        session.execute(update(Image).where(Image.id.in_(ids[7:])).values(status=DONE))
    sent.clear()
    assert resume_job(sessions, job_id, 4, send) == (0, 0) and sent == []
    with sessions() as session:  # nothing left: resume closes the job
        assert session.get(Job, job_id).status == DONE
    with pytest.raises(LookupError):
        resume_job(sessions, job_id + 1, 4, send)


def test_a_broker_failure_while_enqueueing_says_how_to_recover(folder, sqlite_url):
    sessions = open_database(sqlite_url)
    sent: list[list[int]] = []

    def send(job_id: int, image_ids: list[int]) -> None:
        if sent:
            raise ConnectionError("broker went away")
        sent.append(image_ids)

    with pytest.raises(EnqueueError, match=r"only 1 of 3 chunks.*facegender resume"):
        enqueue_folder(sessions, folder, 4, send)


def test_rate_and_eta_come_from_the_recent_processing_times(folder, sqlite_url):
    sessions = open_database(sqlite_url)
    job_id, _ = enqueue_folder(sessions, folder, 10, lambda *_: None)
    now = datetime.now(UTC)
    with sessions.begin() as session:
        session.execute(update(Job).values(created_at=now - timedelta(minutes=10)))
        ids = sorted(session.scalars(select(Image.id)))
        # 6 images finished within the last minute: 0.1 images/s, 4 left -> 40 s
        session.execute(
            update(Image)
            .where(Image.id.in_(ids[:6]))
            .values(status=DONE, processed_at=now - timedelta(seconds=30))
        )
    (status,) = job_statuses(sessions, job_id)
    assert status.pending == 4
    rate = job_rate(sessions, status, now=now)
    assert rate.per_second == pytest.approx(0.1)
    assert rate.eta_seconds == pytest.approx(40)
    assert format_eta(rate.eta_seconds) == "0:40" and format_eta(3725) == "1:02:05"

    with sessions.begin() as session:
        session.execute(update(Image).where(Image.status == PENDING).values(status=DONE))
    (status,) = job_statuses(sessions, job_id)
    assert job_rate(sessions, status, now=now).eta_seconds == 0


def test_worker_refuses_a_database_without_the_schema(tmp_path: Path, model_path: Path):
    result = CliRunner().invoke(
        main,
        ["worker", "--db", f"sqlite:///{tmp_path / 'empty.db'}", "--model", str(model_path)],
    )
    assert result.exit_code == 1
    assert "facegender db upgrade" in result.output


def test_enqueue_sends_chunks_while_the_folder_is_still_being_scanned(tmp_path, sqlite_url):
    """Workers can start at once: the first chunks go out before the scan has finished,
    and every image is sent exactly once (registration and sending go page by page)."""
    tree = tmp_path / "tree"
    for part in range(3):
        (tree / str(part)).mkdir(parents=True)
        for index in range(1000):
            (tree / str(part) / f"{index}.jpg").touch()
    sessions = open_database(sqlite_url)
    scanning_when_sent: list[bool] = []
    ids: list[int] = []

    def send(job_id: int, image_ids: list[int]) -> None:
        with sessions() as session:
            scanning_when_sent.append(not session.get(Job, job_id).scan_done)
        ids.extend(image_ids)

    job_id, count = enqueue_folder(sessions, tree, 100, send)
    assert count == 3000 and sorted(ids) == sorted(set(ids)) and len(ids) == 3000
    assert scanning_when_sent[0], "the first chunk waited for the whole scan"
    with sessions() as session:
        assert session.get(Job, job_id).image_count == 3000
