"""Draw each face's box, gender and confidence onto its image: the seed's visual demo, as files."""

import os
from collections.abc import Iterable, Iterator
from itertools import groupby
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from worker.db import Face, Image
from worker.scan import os_path

_COLOURS = {"female": (255, 64, 160), "male": (40, 140, 255)}  # RGB


def draw_faces(pixels: np.ndarray, faces: Iterable[dict]) -> np.ndarray:
    """A copy of RGB `pixels` with a labelled box per face (x, y, w, h, gender, confidence)."""
    canvas = pixels.copy()
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    for face in faces:
        colour = _COLOURS.get(face["gender"], (255, 255, 255))
        x, y, w, h = (round(face[k]) for k in ("x", "y", "w", "h"))
        cv2.rectangle(canvas, (x, y), (x + w, y + h), colour, thickness)
        label = f"{face['gender']} {face['confidence']:.0%}"
        scale = max(0.4, w / 160)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = max(0, y - th - base - 2)
        cv2.rectangle(canvas, (x, top), (x + tw + 2, top + th + base + 2), colour, -1)
        cv2.putText(
            canvas,
            label,
            (x + 1, top + th + 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            thickness,
            cv2.LINE_AA,
        )
    return canvas


def save_rgb(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def annotated_path(out: Path, root: str, image: str) -> Path:
    """Where a job's annotated copy of `image` goes: its folder under `root` kept below `out`.

    The file name is kept whole (`a.png` -> `a.png.annotated.jpg`), so neither
    same-named files in different folders nor `a.jpg` beside `a.png` collide.
    """
    relative = os.path.relpath(image, root)
    if relative.startswith(os.pardir):  # not under the job's root: keep the whole path
        relative = image.lstrip(os.sep)
    return out / f"{relative}.annotated.jpg"


def job_faces(
    sessions: sessionmaker[Session], job_id: int
) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    """(path to open, path as stored, its faces) for every image of the job with a face."""
    query = (
        select(
            Image.path, Image.path_raw, Face.x, Face.y, Face.w, Face.h, Face.gender, Face.confidence
        )
        .join(Face, Face.image_id == Image.id)
        .where(Image.job_id == job_id)
        .order_by(Image.path, Face.face_index)
    )
    with sessions() as session:
        rows = session.execute(query, execution_options={"yield_per": 1000})
        for (path, raw), faces in groupby(rows, key=lambda row: (row.path, row.path_raw)):
            yield os_path(path, raw), path, [row._asdict() for row in faces]
