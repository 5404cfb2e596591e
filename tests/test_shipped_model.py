"""The shipped model, end to end, against labels: a regression gate on real faces.

A fixed sample of the UTKFace test split and of webfaces' report half (odd
numbers) runs through the whole pipeline (scan, decode, MTCNN, alignment, the
served backend, the database) and each image's largest face is scored against
its label; an image with no face counts as wrong. The floors sit a few points
under what the shipped model scores on these samples, so an inverted
threshold, a broken alignment or a mis-ported network fails CI.
"""

import csv
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from worker.db import Face, Image, open_database
from worker.embedded import run_folder

SPLITS = Path(__file__).resolve().parents[1] / "classifier" / "splits"
# Measured on these samples with the shipped model (served int8 backend):
# UTKFace 91.7% (204 images: every 16th of the test split), webfaces odd 98.6% (288:
# every 4th odd file).
UTKFACE_FLOOR = 0.88
WEBFACES_FLOOR = 0.95


def _link_sample(files: list[Path], folder: Path) -> None:
    folder.mkdir()
    for file in files:
        os.symlink(file, folder / file.name)


def _accuracy(sqlite_url: str, folder: Path, labels: dict[str, str], models) -> float:
    sessions = open_database(sqlite_url)
    job_id, _ = run_folder(sessions, folder, models, batch_size=32, reuse=False)
    largest: dict[str, tuple[float, str]] = {}
    with sessions() as session:
        rows = session.execute(
            select(Image.path, Face.w * Face.h, Face.gender)
            .join(Face, Face.image_id == Image.id)
            .where(Image.job_id == job_id)
        )
        for path, area, gender in rows:
            name = Path(path).name
            if name not in largest or area > largest[name][0]:
                largest[name] = (area, gender)
    right = sum(largest.get(name, (0, None))[1] == gender for name, gender in labels.items())
    return right / len(labels)


def test_utkface_test_sample_end_to_end(data_dir: Path, sqlite_url: str, models, tmp_path: Path):
    names = (SPLITS / "utkface_test.txt").read_text().split()[::16]
    files = [data_dir / "utkface" / name for name in names]
    labels = {f.name: ("male", "female")[int(f.name.split("_")[1])] for f in files}
    _link_sample(files, tmp_path / "utkface")
    accuracy = _accuracy(sqlite_url, tmp_path / "utkface", labels, models)
    assert accuracy >= UTKFACE_FLOOR, f"{accuracy:.3f} on {len(files)} UTKFace test images"


def test_webfaces_report_half_sample_end_to_end(
    data_dir: Path, sqlite_url: str, models, tmp_path: Path
):
    folder = data_dir / "webfaces"
    if not (folder / "labels.csv").is_file():
        pytest.fail(f"webfaces/labels.csv missing under {data_dir}")
    with open(folder / "labels.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["file"][-8:-4]) % 2 == 1]
    rows = sorted(rows, key=lambda row: row["file"])[::4]
    labels = {row["file"]: row["gender"] for row in rows}
    _link_sample([folder / name for name in labels], tmp_path / "webfaces")
    accuracy = _accuracy(sqlite_url, tmp_path / "webfaces", labels, models)
    assert accuracy >= WEBFACES_FLOOR, f"{accuracy:.3f} on {len(labels)} webfaces (odd)"
