"""The compiled MTCNN driver finds what the mtcnn package finds, and its NMS is the package's."""

from pathlib import Path

import numpy as np
import pytest

from detector import FaceDetector, load_image
from detector.mtcnn_detector import _nms


@pytest.mark.parametrize("method", ["union", "min"])
@pytest.mark.parametrize("sort", [True, False])
def test_nms_keeps_exactly_what_the_package_keeps(method: str, sort: bool) -> None:
    from mtcnn.utils.bboxes import smart_nms_from_bboxes

    rng = np.random.default_rng(7)
    for trial in range(60):
        count = int(rng.integers(1, 200))
        corner = rng.uniform(0, 100, (count, 2))
        size = rng.uniform(0, 30, (count, 2))
        size[rng.random(count) < 0.05] = 0  # degenerate boxes: 0/0 overlaps
        scores = rng.choice(rng.uniform(0, 1, 15), count)  # ties in score
        boxes = np.c_[rng.integers(0, 12, count), corner, corner + size, scores]
        threshold = float(rng.choice([0.5, 0.7]))
        with np.errstate(all="ignore"):
            expected = smart_nms_from_bboxes(
                boxes.copy(), threshold=threshold, method=method, initial_sort=sort
            )
        assert np.array_equal(_nms(boxes.copy(), threshold, method, sort), expected), trial


def test_faces_match_the_mtcnn_package(utkface_files: list[Path], crowd_files: list[Path]) -> None:
    from mtcnn import MTCNN

    detector = FaceDetector()
    detector.load()
    package = MTCNN()
    s = detector.settings
    for files in (utkface_files[::1500][:12], crowd_files[:4]):
        prepared = [
            detector._prepare(load_image(p).pixels, s.pad_fraction, s.max_side) for p in files
        ]
        images = [image for image, _, _ in prepared]
        expected = np.asarray(
            package.detect_faces(
                images,
                box_format="xyxy",
                output_type="numpy",
                min_face_size=s.min_face_size,
                threshold_pnet=s.threshold_pnet,
                threshold_rnet=s.threshold_rnet,
                threshold_onet=s.threshold_onet,
            ),
            dtype=np.float64,
        ).reshape(-1, 16)
        found = detector._run_mtcnn(images, prepared[0][2])
        assert len(found) == len(expected) >= len(files)
        key = lambda rows: rows[np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))]  # noqa: E731
        assert np.allclose(key(found), key(expected), atol=0.01)
