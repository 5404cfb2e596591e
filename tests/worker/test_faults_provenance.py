"""Whose fault a failure is (real failures, not constructed ones), and the job's provenance."""

import json
import logging
import socket
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from worker.db import Job, open_database
from worker.faults import is_infrastructure, is_out_of_memory
from worker.jobs import create_job
from worker.provenance import Provenance, describe, record


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def raised(action) -> BaseException:
    with pytest.raises(BaseException) as caught:
        action()
    return caught.value


def test_an_unreachable_database_or_broker_is_infrastructure():
    port = closed_port()
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/x")
    error = raised(lambda: engine.connect())
    assert is_infrastructure(error) and not is_out_of_memory(error)

    import redis

    broker = redis.Redis(port=port, socket_connect_timeout=2)
    assert is_infrastructure(raised(broker.ping))


def test_an_image_error_is_not_infrastructure(sqlite_url):
    engine = create_engine(sqlite_url)
    with engine.connect() as connection:
        error = raised(lambda: connection.execute(text("SELECT x FROM nowhere_at_all")))
    # SQLite calls a missing table an OperationalError too: a retry is harmless, not charged.
    assert is_infrastructure(error)
    assert not is_infrastructure(ValueError("cannot identify image file"))
    assert not is_out_of_memory(ValueError("cannot identify image file"))


def test_an_allocation_too_large_is_out_of_memory():
    error = raised(lambda: np.empty((1 << 40, 1 << 20), np.uint8))
    assert is_out_of_memory(error) and not is_infrastructure(error)
    wrapped = raised(lambda: _wrap(error))  # the pipeline re-raises from its threads
    assert is_out_of_memory(wrapped)


def _wrap(error: BaseException) -> None:
    try:
        raise error
    except BaseException as inner:
        raise RuntimeError("batch failed") from inner


def test_a_job_keeps_the_first_provenance_and_warns_about_another(
    models, tmp_path: Path, sqlite_url, caplog
):
    sessions = open_database(sqlite_url)
    (tmp_path / "a").mkdir()
    job_id = create_job(sessions, tmp_path / "a")
    mine = describe(models)
    assert mine.model_version == models.classifier.version
    assert mine.backend == models.classifier.backend_used
    assert mine.detector_settings["min_face_size"] == models.detector.settings.min_face_size
    assert {"python", "packages", "host"} <= mine.runtime.keys()
    assert "numpy" in mine.runtime["packages"]
    assert record(sessions, job_id, mine) == mine
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job.model_version == mine.model_version and job.backend == mine.backend
        assert json.loads(job.detector_settings) == mine.detector_settings
        assert Provenance.of_job(job) == mine

    # Another host: same rows, no warning. Other detector settings: the first wins, a warning.
    elsewhere = Provenance(**{**mine.__dict__, "runtime": {**mine.runtime, "host": {}}})
    with caplog.at_level(logging.WARNING, "facegender.worker"):
        assert record(sessions, job_id, elsewhere) == mine
        assert not caplog.records
        other = Provenance(**{**mine.__dict__, "detector_settings": {"min_face_size": 40}})
        assert record(sessions, job_id, other) == mine
    assert "min_face_size" in caplog.text and f"job {job_id} was started with" in caplog.text
