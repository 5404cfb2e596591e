"""The embedded path end to end: folder -> job -> rows, on SQLite and PostgreSQL."""

import shutil

import pytest
from sqlalchemy import func, inspect, select

from tests.badfiles import build_bad_corpus, write_exif_rotated
from worker.db import DONE, ERROR, Face, Image, open_database
from worker.embedded import run_folder
from worker.results import face_results, job_statuses

FACE_COLUMNS = (
    "face_index", "x", "y", "w", "h", "det_confidence", "left_eye_x", "left_eye_y",
    "right_eye_x", "right_eye_y", "nose_x", "nose_y", "mouth_left_x", "mouth_left_y",
    "mouth_right_x", "mouth_right_y", "gender", "confidence", "model_version",
)  # fmt: skip


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory, utkface_files, crowd_files):
    """Good UTKFace faces and crowd photos mixed with the bad-file corpus."""
    folder = tmp_path_factory.mktemp("mixed")
    good = utkface_files[::500][:30]
    for path in good:
        shutil.copy(path, folder / path.name)
    (folder / "crowds").mkdir()
    for path in crowd_files[:5]:
        shutil.copy(path, folder / "crowds" / path.name)
    expected = build_bad_corpus(folder / "odd", utkface_files[:4])
    write_exif_rotated(utkface_files[7], folder / "odd" / "exif_rotated.jpg")
    return folder, expected


def _faces(sessions, job_id: int) -> list[tuple]:
    with sessions() as session:
        query = (
            select(Image.path, *(getattr(Face, c) for c in FACE_COLUMNS))
            .join(Face, Face.image_id == Image.id)
            .where(Image.job_id == job_id)
            .order_by(Image.path, Face.face_index)
        )
        return [tuple(row) for row in session.execute(query)]


def test_mixed_folder_completes_with_an_error_row_per_bad_file(db_url, mixed_folder, models):
    folder, expected = mixed_folder
    sessions = open_database(db_url)
    job_id, totals = run_folder(sessions, folder, models, batch_size=16)
    with sessions() as session:
        images = {row.path: row for row in session.scalars(select(Image))}
    for item in expected:
        row = images[str(item.path.absolute())]
        if item.error_code:
            assert row.status == ERROR, item.path.name
            assert row.error_code == item.error_code and row.error, item.path.name
        else:
            assert row.status == DONE, (item.path.name, row.error)
            assert row.sha256 and row.width == 200 and row.height == 200
    goods = [r for p, r in images.items() if "/odd/" not in p]
    assert all(r.status == DONE for r in goods)
    assert sum(r.face_count == 1 for r in goods if "crowds" not in r.path) >= 29
    assert sum(r.face_count for r in goods if "crowds" in r.path) >= 5
    (status,) = job_statuses(sessions, job_id)
    assert status.status == "done" and status.pending == 0
    assert status.error == sum(1 for e in expected if e.error_code)
    assert status.faces == totals.faces > 35


def test_exif_rotated_face_is_found_upright(db_url, mixed_folder, models):
    folder, _ = mixed_folder
    sessions = open_database(db_url)
    job_id, _ = run_folder(sessions, folder / "odd", models, batch_size=8)
    rows = [r for r in _faces(sessions, job_id) if r[0].endswith("exif_rotated.jpg")]
    assert len(rows) == 1
    face = dict(zip(("path", *FACE_COLUMNS), rows[0], strict=True))
    eyes_y = (face["left_eye_y"] + face["right_eye_y"]) / 2
    mouth_y = (face["mouth_left_y"] + face["mouth_right_y"]) / 2
    assert mouth_y - eyes_y > 20  # eyes above the mouth: upright
    assert abs(face["left_eye_y"] - face["right_eye_y"]) < 15
    assert face["left_eye_x"] < face["right_eye_x"]


def test_running_twice_gives_identical_face_rows(
    db_url, utkface_files, crowd_files, tmp_path, models
):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in [*utkface_files[1::700][:20], *crowd_files[10:14]]:
        shutil.copy(path, folder / path.name)
    sessions = open_database(db_url)
    first, _ = run_folder(sessions, folder, models, batch_size=8)
    second, _ = run_folder(sessions, folder, models, batch_size=5)
    rows_first, rows_second = _faces(sessions, first), _faces(sessions, second)
    assert len(rows_first) > 24
    assert [r[:3] for r in rows_first] == [r[:3] for r in rows_second]
    for a, b in zip(rows_first, rows_second, strict=True):
        assert a[0] == b[0] and a[1] == b[1] and a[-2] == b[-2] and a[-1] == b[-1]
        assert all(abs(x - y) < 1e-3 for x, y in zip(a[2:-2:], b[2:-2:], strict=True)
                   if isinstance(x, float))  # fmt: skip
    with sessions() as session:
        duplicates = session.execute(
            select(Face.image_id, Face.face_index, func.count())
            .group_by(Face.image_id, Face.face_index)
            .having(func.count() > 1)
        ).all()
    assert duplicates == []


def test_schema_comes_from_the_migration(db_url):
    sessions = open_database(db_url)
    inspector = inspect(sessions.kw["bind"])
    assert {"jobs", "images", "faces", "alembic_version"} <= set(inspector.get_table_names())
    with sessions() as session:
        from sqlalchemy import text

        assert session.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0001"
    open_database(db_url)  # upgrading an up-to-date database is a no-op


def test_results_filters(sqlite_url, utkface_files, tmp_path, models):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in utkface_files[3::900][:16]:
        shutil.copy(path, folder / path.name)
    (folder / "broken.jpg").write_text("nope")
    sessions = open_database(sqlite_url)
    job_id, _ = run_folder(sessions, folder, models, batch_size=8)
    everything = face_results(sessions, job_id=job_id)
    assert everything and all(r["status"] == "done" for r in everything)
    for gender in ("male", "female"):
        subset = face_results(sessions, job_id=job_id, gender=gender)
        assert all(r["gender"] == gender for r in subset)
    confident = face_results(sessions, job_id=job_id, min_confidence=0.9)
    assert all(r["confidence"] >= 0.9 for r in confident)
    with_empty = face_results(sessions, job_id=job_id, include_empty=True)
    empty = [r for r in with_empty if r["face_index"] is None]
    assert len(with_empty) == len(everything) + len(empty)
    (broken,) = [r for r in empty if r["status"] == "error"]
    assert broken["path"].endswith("broken.jpg") and "not a recognised image" in broken["error"]
