"""Draw each face's box, gender and confidence onto its image: the seed's visual demo, as files."""

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

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
