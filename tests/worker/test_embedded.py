"""The embedded path end to end: folder -> job -> rows, on SQLite and PostgreSQL."""

import os
import shutil
import threading
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, inspect, select

from tests.badfiles import build_bad_corpus, write_exif_rotated
from worker.db import DONE, ERROR, PENDING, RUNNING, Face, Image, Job, open_database
from worker.embedded import open_job, run_folder, run_job
from worker.results import iter_results, job_statuses

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
            assert row.sha256 and (row.width, row.height) == item.size
            if max(item.size) < 20:
                assert row.face_count == 0, item.path.name
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
    second, totals = run_folder(sessions, folder, models, batch_size=5, reuse=False)
    assert totals.reused == 0  # detected again: the comparison can fail
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
    from sqlalchemy import text

    with sessions() as session:
        version = session.execute(text("SELECT version_num FROM alembic_version")).scalar()
    from alembic.script import ScriptDirectory

    from worker.db import _alembic_config

    assert version == ScriptDirectory.from_config(_alembic_config()).get_current_head()
    open_database(db_url)  # upgrading an up-to-date database is a no-op


def test_results_filters(sqlite_url, utkface_files, tmp_path, models):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in utkface_files[3::900][:16]:
        shutil.copy(path, folder / path.name)
    (folder / "broken.jpg").write_text("nope")
    sessions = open_database(sqlite_url)
    job_id, _ = run_folder(sessions, folder, models, batch_size=8)
    everything = _results(sessions, job_id=job_id)
    assert everything and all(r["status"] == "done" for r in everything)
    for gender in ("male", "female"):
        subset = _results(sessions, job_id=job_id, gender=gender)
        assert all(r["gender"] == gender for r in subset)
    confident = _results(sessions, job_id=job_id, min_confidence=0.9)
    assert all(r["confidence"] >= 0.9 for r in confident)
    with_empty = _results(sessions, job_id=job_id, include_empty=True)
    empty = [r for r in with_empty if r["face_index"] is None]
    assert len(with_empty) == len(everything) + len(empty)
    (broken,) = [r for r in empty if r["status"] == "error"]
    assert broken["path"].endswith("broken.jpg") and "not a recognised image" in broken["error"]


def _results(sessions, **filters) -> list[dict]:
    return list(iter_results(sessions, **filters))


def test_results_include_empty_composes_with_face_filters(
    sqlite_url, utkface_files, tmp_path, models
):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in utkface_files[5::900][:12]:
        shutil.copy(path, folder / path.name)
    (folder / "broken.jpg").write_text("nope")
    PILImage.new("RGB", (120, 90), (90, 160, 90)).save(folder / "lawn.png")
    sessions = open_database(sqlite_url)
    job_id, _ = run_folder(sessions, folder, models, batch_size=8)
    for gender in ("male", "female"):
        rows = _results(sessions, job_id=job_id, gender=gender, include_empty=True)
        faces = [r for r in rows if r["face_index"] is not None]
        assert faces == _results(sessions, job_id=job_id, gender=gender)
        empty = {Path(r["path"]).name: r["status"] for r in rows if r["face_index"] is None}
        assert empty == {"broken.jpg": "error", "lawn.png": "done"}
    paths = [r["path"] for r in _results(sessions, job_id=job_id, include_empty=True)]
    assert paths == sorted(paths)


def _face_bytes(path: Path, fmt: str) -> None:
    PILImage.open(path).convert("RGB").save(path.with_suffix("." + fmt.lower()), format=fmt)


def test_any_file_name_and_heic_avif_photos_are_processed(db_url, utkface_files, tmp_path, models):
    folder = tmp_path / "phone"
    folder.mkdir()
    latin = os.fsdecode(bytes(folder) + b"/caf\xe9.jpg")
    shutil.copy(utkface_files[11], latin)
    for index, fmt in ((12, "HEIF"), (14, "AVIF")):
        source = folder / f"face{index}.jpg"
        shutil.copy(utkface_files[index], source)
        _face_bytes(source, fmt)
        source.unlink()
    heic = (folder / "face12.heif").read_bytes()
    (folder / "cut.heic").write_bytes(heic[: len(heic) // 2])  # libheif: end of file
    (folder / "stub.heic").write_bytes(heic[:40])  # the container's header, no image
    sessions = open_database(db_url)
    job_id, _ = run_folder(sessions, folder, models, batch_size=4)
    with sessions() as session:
        rows = {Path(r.path).name: r for r in session.scalars(select(Image))}
    assert set(rows) == {"caf\\xe9.jpg", "face12.heif", "face14.avif", "cut.heic", "stub.heic"}
    for name in ("caf\\xe9.jpg", "face12.heif", "face14.avif"):
        assert rows[name].status == DONE and rows[name].face_count == 1, (name, rows[name].error)
    assert rows["caf\\xe9.jpg"].path_raw == os.fsencode(latin)
    assert rows["cut.heic"].status == ERROR and rows["cut.heic"].error_code == "corrupt"
    assert "end of file" in rows["cut.heic"].error
    assert rows["stub.heic"].status == ERROR and rows["stub.heic"].error_code == "corrupt"
    assert "HEIF/AVIF" in rows["stub.heic"].error
    shown = {r["path"] for r in _results(sessions, job_id=job_id)}
    assert f"{folder}/caf\\xe9.jpg" in shown


def test_work_starts_before_the_scan_ends(sqlite_url, utkface_files, tmp_path, models):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(1500):  # more than one scan batch (1,000): empty files fail fast
        (folder / f"{i:04d}.jpg").touch()
    shutil.copy(utkface_files[20], folder / "face.jpg")
    sessions = open_database(sqlite_url)
    job_id, continued = open_job(sessions, folder)
    events: list[str] = []
    totals, done = run_job(
        sessions,
        job_id,
        folder,
        models,
        batch_size=100,
        on_batch=lambda report, count: events.append("batch"),
        on_registered=lambda count: events.append(f"registered {count}"),
    )
    assert not continued and done
    assert events.index("batch") < events.index("registered 1501")
    assert totals.errors == 1500 and totals.done == 1 and totals.faces == 1


def _rows(sessions, job_id: int) -> list[tuple]:
    return [
        (Path(r["path"]).name, r["status"], r["face_index"], r["gender"], round(r["x"] or 0))
        for r in _results(sessions, job_id=job_id, include_empty=True)
    ]


def test_a_stopped_run_is_continued_and_ends_with_the_same_rows(
    sqlite_url, utkface_files, tmp_path, models
):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in utkface_files[30::500][:14]:
        shutil.copy(path, folder / path.name)
    sessions = open_database(sqlite_url)
    job_id, _ = open_job(sessions, folder)
    stop = threading.Event()
    _, done = run_job(
        sessions, job_id, folder, models, 4, on_batch=lambda *_: stop.set(), stop=stop
    )
    with sessions() as session:
        job = session.get(Job, job_id)
        pending = session.scalar(select(func.count()).where(Image.status == PENDING))
        assert job is not None and job.status == RUNNING and not job.scan_done
    assert not done and 0 < pending < 14
    shutil.copy(utkface_files[1], folder / "added later.jpg")
    again, continued = open_job(sessions, folder)
    assert again == job_id and continued
    _, done = run_job(sessions, job_id, folder, models, 4)
    assert done
    reference = open_database(f"sqlite:///{tmp_path / 'reference.db'}")
    straight, _ = run_folder(reference, folder, models, batch_size=6)
    assert _rows(sessions, job_id) == _rows(reference, straight)
    assert len(_rows(sessions, job_id)) >= 15
    (status,) = job_statuses(sessions, job_id)
    assert status.status == DONE and status.total == 15
