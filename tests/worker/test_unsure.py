"""The unsure flag on real detected faces: low confidence, and faces too small to judge."""

import csv
import io
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image as PILImage
from sqlalchemy import select

from classifier.runtime.unsure import UnsureRule, eye_distance
from worker.cli import main
from worker.db import Face, Image, Job, open_database
from worker.embedded import run_folder
from worker.results import iter_results

# An adult the bundled model answers with high confidence, at full size and shrunk.
ADULT = "30_0_0_20170103181149464.jpg.chip.jpg"
SMALL_SIDE = 32  # its eyes are then ~14 px apart: detected, too small to judge


@pytest.fixture
def folder(tmp_path: Path, data_dir: Path) -> Path:
    """The adult's chip as it is (eyes ~78 px apart) and shrunk to SMALL_SIDE px."""
    target = tmp_path / "photos"
    target.mkdir()
    chip = PILImage.open(data_dir / "utkface" / ADULT)
    chip.save(target / "large.jpg", quality=95)
    chip.resize((SMALL_SIDE, SMALL_SIDE), PILImage.Resampling.LANCZOS).save(target / "small.png")
    return target


def _faces(sessions, job_id: int) -> dict[str, Face]:
    with sessions() as session:
        rows = session.execute(
            select(Image.path, Face)
            .join(Face, Face.image_id == Image.id)
            .where(Face.job_id == job_id)
        )
        return {Path(path).name: face for path, face in rows}


def _eyes(face: Face) -> float:
    return eye_distance([[face.left_eye_x, face.left_eye_y], [face.right_eye_x, face.right_eye_y]])


def test_small_faces_and_low_confidence_are_flagged_and_recorded(db_url, folder, models):
    sessions = open_database(db_url)
    rule = UnsureRule(unsure_below=0.9, min_eye_distance=20)
    job_id, _ = run_folder(sessions, folder, replace(models, unsure=rule), batch_size=4)
    faces = _faces(sessions, job_id)
    assert faces.keys() == {"large.jpg", "small.png"}
    large, small = faces["large.jpg"], faces["small.png"]
    assert _eyes(large) > 60 and _eyes(small) < 20  # in original pixels of each file
    assert large.confidence >= 0.9 and not large.unsure
    assert small.unsure  # by its eyes, whatever its confidence
    for face in faces.values():
        assert face.gender == ("female" if face.p_female >= 0.5 else "male")
        assert face.confidence == pytest.approx(max(face.p_female, 1 - face.p_female))
    with sessions() as session:
        job = session.get(Job, job_id)
        assert (job.unsure_below, job.min_eye_distance) == (0.9, 20)


def test_under_the_confidence_threshold_every_answer_is_unsure_and_unchanged(
    db_url, folder, models
):
    sessions = open_database(db_url)
    every = replace(models, unsure=UnsureRule(unsure_below=1.0))
    job_id, _ = run_folder(sessions, folder, every, batch_size=4)
    faces = _faces(sessions, job_id)
    assert len(faces) == 2 and all(face.unsure for face in faces.values())
    assert faces["large.jpg"].confidence >= 0.9  # the answer is kept, only flagged


def test_results_filter_on_unsure_in_every_format(sqlite_url, folder, models):
    sessions = open_database(sqlite_url)
    rule = UnsureRule(unsure_below=0.5, min_eye_distance=20)
    job_id, _ = run_folder(sessions, folder, replace(models, unsure=rule), batch_size=4)

    def paths(unsure: str) -> list[str]:
        return [Path(r["path"]).name for r in iter_results(sessions, job_id, unsure=unsure)]

    assert paths("all") == ["large.jpg", "small.png"]
    assert paths("only") == ["small.png"]
    assert paths("exclude") == ["large.jpg"]

    runner = CliRunner()
    out = runner.invoke(main, ["results", "--db", sqlite_url, "--format", "csv"])
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.output)))
    assert {Path(r["path"]).name: r["unsure"] for r in rows} == {
        "large.jpg": "False",
        "small.png": "True",
    }
    for fmt in ("table", "json", "jsonl"):
        out = runner.invoke(main, ["results", "--db", sqlite_url, "--format", fmt])
        assert "unsure" in out.output
    out = runner.invoke(
        main, ["results", "--db", sqlite_url, "--unsure", "only", "--format", "csv"]
    )
    assert [Path(r["path"]).name for r in csv.DictReader(io.StringIO(out.output))] == ["small.png"]
    out = runner.invoke(main, ["results", "--db", sqlite_url, "--unsure", "maybe"])
    assert out.exit_code == 2 and "maybe" in out.output


def test_run_takes_thresholds_from_flags_and_env_and_records_them(
    sqlite_url, folder, model_path, monkeypatch
):
    monkeypatch.setenv("FACEGENDER_MIN_EYE_DISTANCE", "20")
    monkeypatch.setenv("FACEGENDER_MODEL", str(model_path))
    out = CliRunner().invoke(
        main, ["run", str(folder), "--db", sqlite_url, "--unsure-below", "0.5"]
    )
    assert out.exit_code == 0, out.output
    sessions = open_database(sqlite_url)
    with sessions() as session:
        job = session.scalars(select(Job)).one()
    assert (job.unsure_below, job.min_eye_distance) == (0.5, 20)
    faces = _faces(sessions, job.id)
    assert {name: face.unsure for name, face in faces.items()} == {
        "large.jpg": False,
        "small.png": True,
    }
    monkeypatch.setenv("FACEGENDER_UNSURE_BELOW", "high")
    out = CliRunner().invoke(main, ["run", str(folder), "--db", sqlite_url])
    assert out.exit_code == 1
    assert out.output == "Error: FACEGENDER_UNSURE_BELOW must be a number, not 'high'\n"
