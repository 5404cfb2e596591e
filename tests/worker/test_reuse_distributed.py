"""Reuse and reclassify in distributed mode: a real worker, real Redis and PostgreSQL."""

import re
import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select

from classifier import GenderClassifier
from tests.worker.test_distributed import cli, cluster, enqueue, snapshot, wait_for, wait_job_done
from tests.worker.test_reclassify import second_model
from worker.db import Face, open_database

pytestmark = pytest.mark.services
__all__ = ["cluster", "second_model"]  # fixtures used here
IMAGES = 8


def _folder(files: list[Path], folder: Path) -> Path:
    folder.mkdir()
    for path in files:
        shutil.copy(path, folder / path.name)
    return folder


def _reused(log: str, job_id: int) -> int:
    return sum(
        int(n)
        for n in re.findall(rf"job {job_id}: chunk of \d+ images: \d+ done \((\d+) reused", log)
    )


def _geometry(rows: dict[str, dict]) -> dict[str, list[tuple]]:
    columns = ("face_index", "x", "y", "w", "h", "gender", "confidence", "model_version")
    return {
        name: [(row["face_count"], *(getattr(f, c) for c in columns)) for f in row["faces"]]
        for name, row in rows.items()
    }


def test_workers_reuse_known_content_and_reclassify_in_chunks(
    cluster, tmp_path, utkface_files, crowd_files, second_model, postgres_url, redis_url
):
    files = [*utkface_files[::3000][: IMAGES - 1], crowd_files[3]]
    worker = cluster("w1")
    worker.wait_ready()

    first = enqueue(_folder(files, tmp_path / "a"), postgres_url, redis_url, chunk=4)
    wait_job_done(postgres_url, first, 180, worker)
    second = enqueue(_folder(files, tmp_path / "b"), postgres_url, redis_url, chunk=4)
    wait_job_done(postgres_url, second, 180, worker)
    forced = int(
        cli("enqueue", str(_folder(files, tmp_path / "c")), "--db", postgres_url, "--broker",
            redis_url, "--chunk-size", "4", "--no-reuse")
    )  # fmt: skip
    wait_job_done(postgres_url, forced, 180, worker)

    log = worker.text()
    assert (_reused(log, first), _reused(log, second), _reused(log, forced)) == (0, IMAGES, 0)
    reference = _geometry(snapshot(postgres_url, first))
    assert _geometry(snapshot(postgres_url, second)) == reference
    assert _geometry(snapshot(postgres_url, forced)) == reference

    version = GenderClassifier(second_model).version
    out = cli("reclassify", str(first), "--distributed", "--model", str(second_model),
              "--db", postgres_url, "--broker", redis_url, "--chunk-size", "3")  # fmt: skip
    assert f"queued for reclassify by model {version}" in out
    sessions = open_database(postgres_url)

    def count(model_version: str) -> int:
        with sessions() as session:
            query = select(func.count()).where(
                Face.job_id == first, Face.model_version == model_version
            )
            return session.scalar(query)

    (detected,) = {face[-1] for faces in reference.values() for face in faces}
    assert count(detected) > 0
    wait_for(lambda: count(version) == count(detected), 180, "the reclassify chunks", worker)
    assert "reclassified" in worker.text()
