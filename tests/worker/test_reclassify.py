"""Reclassify on SQLite and PostgreSQL: new-version rows from stored landmarks, no detector."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from classifier import GenderClassifier
from worker.db import DONE, ERROR, Face, Image, open_database
from worker.embedded import run_folder
from worker.reclassify import CHANGED, reclassify_job
from worker.results import iter_results, job_statuses

GEOMETRY = [
    c.name
    for c in Face.__table__.columns
    if c.name in ("face_index", "x", "y", "w", "h", "det_confidence")
    or c.name.endswith(("_x", "_y"))
]
TEMPERATURE_FACTOR = 2.0


@pytest.fixture(scope="module")
def second_model(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model with another calibration temperature: another model version."""
    folder = tmp_path_factory.mktemp("model") / "model"
    shutil.copytree(model_path.parent, folder)
    for meta in folder.glob("*.json"):
        data = json.loads(meta.read_text())
        if "temperature" in data:
            data["temperature"] *= TEMPERATURE_FACTOR
            meta.write_text(json.dumps(data))
    return folder / model_path.name


@pytest.fixture
def folder(tmp_path: Path, utkface_files, crowd_files) -> Path:
    """Four faces, a crowd photo, and a crowd photo made large (decoded at a reduced scale)."""
    root = tmp_path / "photos"
    root.mkdir()
    for path in [*utkface_files[::3000][:4], crowd_files[3]]:
        shutil.copy(path, root / path.name)
    large = PILImage.open(crowd_files[1]).convert("RGB").resize((4160, 3120))
    large.save(root / "large.jpg", quality=90)
    return root


def _faces(sessions, version: str) -> dict[tuple[str, int], dict]:
    with sessions() as session:
        rows = session.execute(
            select(Image.path, Face).join(Face, Face.image_id == Image.id)
            .where(Face.model_version == version)
        ).all()  # fmt: skip
        return {
            (Path(path).name, face.face_index): {
                c.name: getattr(face, c.name) for c in Face.__table__.columns
            }
            for path, face in rows
        }


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_reclassify_writes_new_version_rows_from_stored_landmarks(
    db_url, folder, models, second_model
):
    sessions = open_database(db_url)
    job_id, _ = run_folder(sessions, folder, models, batch_size=4)
    old_version = models.classifier.version
    changed = sorted(folder.glob("*.chip.jpg"))[0]
    PILImage.open(changed).save(changed, quality=60)  # other bytes, same picture

    classifier = GenderClassifier(second_model, batch_size=8)
    new_version = classifier.version
    assert new_version != old_version
    report = reclassify_job(sessions, job_id, classifier, batch_size=3)
    assert report.errors == 1 and report.images >= 3

    old, new = _faces(sessions, old_version), _faces(sessions, new_version)
    assert set(new) == {key for key in old if key[0] != changed.name}
    assert any(name == "large.jpg" for name, _ in new)
    for key, row in new.items():
        assert {c: row[c] for c in GEOMETRY} == {c: old[key][c] for c in GEOMETRY}, key
        assert row["job_id"] == old[key]["job_id"] and row["image_id"] == old[key]["image_id"]
        # Same weights and crops, temperature doubled: logit(p) halves exactly.
        expected = _logit(old[key]["p_female"]) / TEMPERATURE_FACTOR
        assert _logit(row["p_female"]) == pytest.approx(expected, abs=1e-3), key

    with sessions() as session:
        image = session.scalars(select(Image).where(Image.path == str(changed.absolute()))).one()
        assert (image.status, image.error_code) == (ERROR, CHANGED)
        assert "changed" in image.error

    # Newest model's rows by default, per image; --model-version picks the old ones.
    shown = list(iter_results(sessions, job_id))
    by_version = {Path(r["path"]).name: r["model_version"] for r in shown}
    assert by_version.pop(changed.name) == old_version
    assert set(by_version.values()) == {new_version}
    assert len(shown) == len(old)
    picked = list(iter_results(sessions, job_id, model_version=old_version))
    assert {r["model_version"] for r in picked} == {old_version} and len(picked) == len(old)

    (status,) = job_statuses(sessions, job_id)
    assert status.faces == len(new) and status.error == 1  # each face once, whatever the versions

    again = reclassify_job(sessions, job_id, classifier)
    assert (again.images, again.faces) == (0, 0)
    with sessions() as session:
        statuses = session.scalars(select(Image.status).where(Image.job_id == job_id)).all()
        assert sorted(statuses) == sorted([DONE] * (len(statuses) - 1) + [ERROR])


def test_reclassify_command_never_builds_a_detector(sqlite_url, folder, models, second_model):
    sessions = open_database(sqlite_url)
    job_id, _ = run_folder(sessions, folder, models, batch_size=8)
    script = (
        "import gc, sys\n"
        "from worker.cli import main\n"
        "main(sys.argv[1:], standalone_mode=False)\n"
        "from detector import FaceDetector\n"
        "print('detectors', sum(isinstance(o, FaceDetector) for o in gc.get_objects()))\n"
    )
    command = [sys.executable, "-c", script, "reclassify", str(job_id)]
    command += ["--model", str(second_model), "--db", sqlite_url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    assert "detectors 0" in done.stdout, done.stdout + done.stderr
    assert "reclassified" in done.stdout
    new_version = GenderClassifier(second_model).version
    assert (
        _faces(sessions, new_version).keys() == _faces(sessions, models.classifier.version).keys()
    )


def test_reclassify_of_an_unknown_job_says_so(sqlite_url):
    open_database(sqlite_url)
    command = [str(Path(sys.executable).with_name("facegender")), "reclassify", "7"]
    done = subprocess.run([*command, "--db", sqlite_url], capture_output=True, text=True)
    assert done.returncode == 1 and "no job 7" in done.stderr, done.stderr
