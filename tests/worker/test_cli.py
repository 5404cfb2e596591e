"""The command line as a user meets it: outputs written right, user errors as one line.

Commands run through click's CliRunner on the real `facegender` group, so the
real option parsing, database opening and writers are what is tested.
"""

import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image as PILImage

from worker.cli import main
from worker.db import _alembic_config, make_engine
from worker.results import iter_results

PROVENANCE = {"model_version", "backend", "detector_settings", "runtime", "package_version"}


def _cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def _user_error(result: Result, text: str) -> None:
    """Non-zero exit, one line on stderr that says `text`, no traceback."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], result.stderr
    assert "Traceback" not in result.output


def _revision(url: str) -> str | None:
    from alembic.migration import MigrationContext

    engine = make_engine(url)
    with engine.connect() as connection:
        revision = MigrationContext.configure(connection).get_current_revision()
    engine.dispose()
    return revision


@pytest.mark.parametrize(
    "command", [["results"], ["status"], ["status", "1"], ["annotate", "--job", "1", "--out", "x"]]
)
def test_reading_a_missing_sqlite_file_is_an_error_and_creates_nothing(tmp_path, command):
    path = tmp_path / "typo.db"
    _user_error(_cli(*command, "--db", f"sqlite:///{path}"), "no database at")
    assert not path.exists()


def test_read_commands_never_migrate_an_old_schema(tmp_path):
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    engine.dispose()
    for args in (["status"], ["results"], ["annotate", "--job", "1", "--out", str(tmp_path)]):
        _user_error(_cli(*args, "--db", url), "run `facegender db upgrade")
    assert _revision(url) == "0001"
    assert _cli("db", "upgrade", "--db", url).exit_code == 0
    assert _revision(url) != "0001"
    assert _cli("status", "--db", url).exit_code == 0


def test_unreachable_database_bad_url_and_bad_settings_are_one_line(tmp_path):
    refused = "postgresql+psycopg://postgres@127.0.0.1:1/facegender"
    for args in (["status"], ["results"], ["db", "upgrade"], ["run", str(tmp_path)]):
        _user_error(_cli(*args, "--db", refused), "cannot use the database")
    _user_error(_cli("status", "--db", "not a url"), "not a usable database URL")
    _user_error(_cli("run", str(tmp_path), "--db", "sqlite:////no/such/dir/x.db"), "cannot use")
    for name in ("FACEGENDER_BATCH_SIZE", "FACEGENDER_MAX_SIDE", "FACEGENDER_DB_URL"):
        value = "abc" if name != "FACEGENDER_DB_URL" else "nonsense://"
        result = _cli("run", str(tmp_path), env={name: value})
        _user_error(result, name if name != "FACEGENDER_DB_URL" else "database URL")
    result = _cli("status", env={"FACEGENDER_CHUNK_SIZE": "0"})
    _user_error(result, "FACEGENDER_CHUNK_SIZE must be at least 1")


def test_a_database_server_that_never_answers_is_one_line_after_a_timeout():
    with socket.socket() as silent:  # accepts connections (the kernel does), says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"postgresql+psycopg://postgres@127.0.0.1:{silent.getsockname()[1]}/facegender"
        facegender = str(Path(sys.executable).with_name("facegender"))
        started = time.monotonic()
        done = subprocess.run(
            [facegender, "status", "--db", url], capture_output=True, text=True, timeout=60
        )
    assert time.monotonic() - started < 30
    assert done.returncode != 0 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "cannot use the database" in line and "timeout" in line, line


def test_opencv_keeps_to_one_thread_beside_the_pipelines_own(monkeypatch):
    import cv2

    from worker.cli import _models

    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(4)
        _models(None)
        assert cv2.getNumThreads() == 1
        monkeypatch.setenv("FACEGENDER_TF_THREADS", "3")
        _models(None)
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)


def test_a_folder_without_images_says_what_it_looked_for(tmp_path):
    folder = tmp_path / "documents"
    (folder / "sub").mkdir(parents=True)
    (folder / "readme.txt").write_text("not a photo")
    (folder / "sub" / "scan.pdf").write_bytes(b"%PDF-1.4")
    result = _cli("run", str(folder), "--db", f"sqlite:///{tmp_path / 'r.db'}")
    assert result.exit_code == 0 and result.stdout.startswith("job 1: 0 done, 0 errors")
    assert f"no image files under {folder} (names ending .avif .bmp" in result.stderr


def test_missing_folder_and_missing_job(tmp_path):
    result = _cli("run", str(tmp_path / "absent"), "--db", f"sqlite:///{tmp_path / 'r.db'}")
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert "Traceback" not in result.output
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert _cli("db", "upgrade", "--db", url).exit_code == 0
    for args in (["status", "7"], ["results", "--job", "7"], ["annotate", "--job", "7"]):
        _user_error(_cli(*args, "--out", str(tmp_path), "--db", url)
                    if args[0] == "annotate" else _cli(*args, "--db", url), "no job 7")  # fmt: skip


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory, utkface_files):
    """A folder with same-named files in two subfolders, a Latin-1 name and a broken file,
    processed by `facegender run`; (db url, folder)."""
    folder = tmp_path_factory.mktemp("cli") / "photos"
    for sub, source in (("a", utkface_files[40]), ("b", utkface_files[41])):
        (folder / sub).mkdir(parents=True)
        shutil.copy(source, folder / sub / "same.jpg")
    shutil.copy(utkface_files[42], os.fsdecode(bytes(folder) + b"/caf\xe9.jpg"))
    (folder / "broken.jpg").write_bytes(b"not a picture")
    url = f"sqlite:///{folder.parent / 'results.db'}"
    result = _cli("run", str(folder), "--db", url)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("job 1: 3 done, 1 errors, 3 faces")
    return url, folder


def test_results_files_hold_the_database_rows(finished_job, tmp_path):
    from worker.db import open_for_reading

    url, folder = finished_job
    expected = list(iter_results(open_for_reading(url), job_id=1))
    assert len(expected) == 3
    assert f"{folder}/caf\\xe9.jpg" in {r["path"] for r in expected}
    for fmt in ("csv", "json", "jsonl", "table"):
        out = tmp_path / f"faces.{fmt}"
        result = _cli("results", "--job", "1", "--format", fmt, "--out", str(out), "--db", url)
        assert result.exit_code == 0 and "wrote 3 rows" in result.stderr, result.output
        text = out.read_text(encoding="utf-8")
        if fmt == "csv":
            rows = list(csv.DictReader(text.splitlines()))
            assert [r["path"] for r in rows] == [r["path"] for r in expected]
            assert [float(r["confidence"]) for r in rows] == [r["confidence"] for r in expected]
        elif fmt == "json":
            document = json.loads(text)
            assert document["rows"] == expected
            (job,) = document["jobs"]
            assert job["job_id"] == 1 and set(job) >= PROVENANCE
        elif fmt == "jsonl":
            assert [json.loads(line) for line in text.splitlines()] == expected
        else:
            lines = text.splitlines()
            assert len(lines) == 4 and lines[0].split()[:3] == ["job_id", "path", "status"]
            assert [line.split()[1] for line in lines[1:]] == [r["path"] for r in expected]
    with_empty = _cli("results", "--include-empty", "--format", "jsonl", "--db", url)
    rows = [json.loads(line) for line in with_empty.stdout.splitlines()]
    (broken,) = [r for r in rows if r["face_index"] is None]
    assert len(rows) == 4 and broken["path"] == f"{folder}/broken.jpg"
    assert broken["status"] == "error" and broken["error"]
    status = json.loads(_cli("status", "1", "--format", "json", "--db", url).stdout)
    assert status["status"] == "done" and status["scan_done"] and set(status) >= PROVENANCE


def test_the_table_keeps_a_row_a_line_whatever_the_file_names(utkface_files, tmp_path):
    folder = tmp_path / "names"
    folder.mkdir()
    names = ["two\nlines.jpg", "tab\there.jpg", "bell\a.jpg", "plain name.jpg"]
    for name, source in zip(names, utkface_files[50:], strict=False):
        shutil.copy(source, folder / name)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert _cli("run", str(folder), "--db", url).exit_code == 0
    lines = _cli("results", "--db", url).stdout.splitlines()
    assert len(lines) == 1 + len(names)
    for name in names:
        escaped = f"{folder}/{name}".encode("unicode_escape").decode()
        assert sum(f" {escaped} " in line for line in lines) == 1, escaped
    rows = list(csv.DictReader(io.StringIO(_cli("results", "--format", "csv", "--db", url).stdout)))
    assert sorted(row["path"] for row in rows) == sorted(f"{folder}/{n}" for n in names)


def test_annotate_job_keeps_the_folder_structure(finished_job, tmp_path):
    url, folder = finished_job
    out = tmp_path / "annotated"
    result = _cli("annotate", "--job", "1", "--out", str(out), "--db", url)
    assert result.exit_code == 0 and "wrote 3 annotated images" in result.stdout, result.output
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.jpg"))
    assert written == [
        "a/same.jpg.annotated.jpg",
        "b/same.jpg.annotated.jpg",
        "caf\\xe9.jpg.annotated.jpg",
    ]
    drawn = {}
    for sub in ("a", "b"):
        original = np.asarray(PILImage.open(folder / sub / "same.jpg").convert("RGB"), np.int16)
        copy = np.asarray(PILImage.open(out / sub / "same.jpg.annotated.jpg"), np.int16)
        assert copy.shape == original.shape
        assert (np.abs(copy - original).max(axis=2) > 100).mean() > 0.01  # a box and a label
        drawn[sub] = copy
    assert np.abs(drawn["a"] - drawn["b"]).mean() > 10  # two different photos, both kept


def test_annotate_one_image_and_a_broken_one(utkface_files, tmp_path):
    image = tmp_path / "face.jpg"
    shutil.copy(utkface_files[43], image)
    result = _cli("annotate", str(image), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0 and "1 faces" in result.stdout, result.output
    drawn = PILImage.open(tmp_path / "out" / "face.jpg.annotated.jpg")
    assert drawn.size == PILImage.open(image).size
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    _user_error(_cli("annotate", str(broken), "--out", str(tmp_path / "out")), "broken.jpg")
