"""Content-addressed reuse on SQLite and PostgreSQL: copied rows, forced work, other settings."""

import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from detector import DetectorSettings, FaceDetector
from worker.db import DONE, Face, Image, open_database
from worker.embedded import open_job, run_job
from worker.jobs import record_unsure
from worker.pipeline import Models

# Every column of a face row but where it is stored.
COPIED = [c.name for c in Face.__table__.columns if c.name not in ("id", "job_id", "image_id")]


@pytest.fixture(scope="module")
def photos(utkface_files, crowd_files) -> list[Path]:
    """Six single faces, a crowd photo with many faces: seven files."""
    return [*utkface_files[::2000][:6], crowd_files[0]]


def _copy(files: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for path in files:
        shutil.copy(path, folder / path.name)
    return folder


def _run(sessions, folder: Path, models: Models, reuse: bool = True):
    job_id, _ = open_job(sessions, folder)
    report, done = run_job(sessions, job_id, folder, models, batch_size=4, reuse=reuse)
    assert done
    return job_id, report


def _rows(sessions, job_id: int) -> dict[str, list[tuple]]:
    """File name -> (sha256, width, height, face_count, face rows) of the job's images."""
    with sessions() as session:
        images = session.scalars(select(Image).where(Image.job_id == job_id)).all()
        rows = {}
        for image in images:
            assert image.status == DONE, image.path
            faces = session.execute(
                select(*(getattr(Face, c) for c in COPIED))
                .where(Face.image_id == image.id)
                .order_by(Face.face_index)
            ).all()
            facts = (image.sha256, image.width, image.height, image.face_count)
            rows[Path(image.path).name] = [facts, *map(tuple, faces)]
        return rows


def test_identical_files_elsewhere_get_copied_rows_without_detection(
    db_url, photos, utkface_files, models, tmp_path
):
    sessions = open_database(db_url)
    first, report = _run(sessions, _copy(photos, tmp_path / "a"), models)
    assert (report.done, report.reused) == (7, 0)
    assert report.faces > 0

    # Another folder (other paths), same content, plus two files never seen.
    new = utkface_files[1:3]
    second, report = _run(sessions, _copy(photos + new, tmp_path / "b"), models)
    assert (report.done, report.reused) == (9, 7)
    before, after = _rows(sessions, first), _rows(sessions, second)
    assert {name: after[name] for name in before} == before
    assert all(len(after[p.name]) == 1 + after[p.name][0][3] for p in new)

    # Everything known: nothing reaches the detector at all.
    third, report = _run(sessions, _copy(photos, tmp_path / "c"), models)
    assert (report.done, report.reused, report.seconds.get("detect", 0.0)) == (7, 7, 0.0)
    assert _rows(sessions, third) == before


def test_no_reuse_detects_again(db_url, photos, models, tmp_path):
    sessions = open_database(db_url)
    first, _ = _run(sessions, _copy(photos[:3], tmp_path / "a"), models)
    second, report = _run(sessions, _copy(photos[:3], tmp_path / "b"), models, reuse=False)
    assert (report.done, report.reused) == (3, 0)
    assert report.seconds["detect"] > 0
    assert _rows(sessions, second) == _rows(sessions, first)  # same models: same rows


def test_other_detector_settings_do_not_reuse(db_url, photos, models, tmp_path):
    sessions = open_database(db_url)
    _run(sessions, _copy(photos[:3], tmp_path / "a"), models)
    settings = DetectorSettings(max_side=models.detector.settings.max_side, min_face_size=30)
    other = Models(FaceDetector(settings, threads=1), models.classifier)
    _, report = _run(sessions, _copy(photos[:3], tmp_path / "b"), other)
    assert (report.done, report.reused) == (3, 0)


def test_copied_faces_are_flagged_by_their_new_jobs_thresholds(db_url, photos, models, tmp_path):
    sessions = open_database(db_url)
    first, _ = _run(sessions, _copy(photos, tmp_path / "a"), models)
    folder = _copy(photos, tmp_path / "b")
    second, _ = open_job(sessions, folder)
    record_unsure(sessions, second, unsure_below=1.0, min_eye_distance=None)  # all unsure
    report, _ = run_job(sessions, second, folder, models, batch_size=4)
    assert report.reused == len(photos)
    with sessions() as session:
        flags = session.execute(select(Face.job_id, Face.unsure)).all()
    assert {unsure for job, unsure in flags if job == second} == {True}
    assert {unsure for job, unsure in flags if job == first} != {True}
