"""`facegender run` as a real process: unreadable files and folders, Ctrl-C and continuing."""

import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

from worker.db import open_database, open_for_reading
from worker.embedded import run_folder
from worker.results import iter_results, job_statuses

FACEGENDER = str(Path(sys.executable).parent / "facegender")


def test_unreadable_file_and_folder_become_error_rows(tmp_path, utkface_files, unprivileged):
    photos = tmp_path / "photos"
    (photos / "private").mkdir(parents=True)
    shutil.copy(utkface_files[50], photos / "face.jpg")
    shutil.copy(utkface_files[51], photos / "locked.jpg")
    shutil.copy(utkface_files[52], photos / "private" / "hidden.jpg")
    (photos / "locked.jpg").chmod(0)
    (photos / "private").chmod(0)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    try:
        run = subprocess.run(
            [*unprivileged, FACEGENDER, "run", str(photos), "--db", url],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        (photos / "private").chmod(0o755)
        (photos / "locked.jpg").chmod(0o644)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("job 1: 1 done, 2 errors, 1 faces"), run.stdout
    sessions = open_for_reading(url)
    rows = {r["path"]: r for r in iter_results(sessions, include_empty=True)}
    assert rows[f"{photos}/face.jpg"]["status"] == "done"
    locked, private = rows[f"{photos}/locked.jpg"], rows[f"{photos}/private"]
    assert locked["status"] == "error" and "permission denied" in locked["error"]
    assert private["status"] == "error" and "cannot list this folder" in private["error"]
    (status,) = job_statuses(sessions, 1)
    assert status.status == "done" and status.scan_done


def _done(db: Path) -> int:
    if not db.exists():
        return 0
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as connection:
        try:
            query = "SELECT count(*) FROM images WHERE status = 'done'"
            return connection.execute(query).fetchone()[0]
        except sqlite3.OperationalError:  # tables not created yet
            return 0


def _faces(sessions, job_id: int) -> list[tuple]:
    return [
        (r["path"], r["status"], r["face_index"], r["gender"], r["x"], r["y"], r["confidence"])
        for r in iter_results(sessions, job_id=job_id, include_empty=True)
    ]


def test_ctrl_c_then_run_again_gives_the_rows_of_an_uninterrupted_run(
    tmp_path, utkface_files, crowd_files, models
):
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in [*utkface_files[::60][:160], *crowd_files[:8]]:
        shutil.copy(path, photos / path.name)
    db = tmp_path / "interrupted.db"
    command = [FACEGENDER, "run", str(photos), "--db", f"sqlite:///{db}", "--batch-size", "4"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while _done(db) == 0 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 130, err
    assert "stopping after the batch in flight" in err
    assert f"run `facegender run {photos}` again to continue" in err.replace("\n", " ")
    sessions = open_for_reading(f"sqlite:///{db}")
    (stopped,) = job_statuses(sessions, 1)
    assert stopped.status == "running" and stopped.done > 0 and stopped.pending > 0, stopped

    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "continuing job 1" in second.stderr
    (finished,) = job_statuses(sessions, 1)
    counts = f"job 1: {finished.done} done, {finished.error} errors, {finished.faces} faces"
    left = 168 - stopped.done - stopped.error
    assert second.stdout.startswith(f"{counts}; this run {left} images"), second.stdout
    assert finished.status == "done" and finished.total == 168 and finished.pending == 0

    reference = open_database(f"sqlite:///{tmp_path / 'reference.db'}")
    straight, _ = run_folder(reference, photos, models, batch_size=4, reuse=False)
    got, want = _faces(sessions, 1), _faces(reference, straight)
    assert [r[:4] for r in got] == [r[:4] for r in want] and len(got) > 168
    # Same images, faces and genders; positions within 2 px and confidences within 0.05,
    # because MTCNN's output moves slightly with which images share a detector call.
    for a, b in zip(got, want, strict=True):
        assert abs((a[4] or 0) - (b[4] or 0)) < 2 and abs((a[5] or 0) - (b[5] or 0)) < 2, (a, b)
        assert abs((a[6] or 0) - (b[6] or 0)) < 0.05, (a, b)
