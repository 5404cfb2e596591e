"""MTCNN detection and alignment on real faces: UTKFace chips and crowd photos."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from detector import TEMPLATE, FaceDetector, align_face, load_image
from detector.align import similarity_matrix


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    found = FaceDetector()
    found.load()
    return found


@pytest.fixture(scope="module")
def utk_sample(utkface_files: list[Path]) -> list[np.ndarray]:
    step = len(utkface_files) // 200
    return [load_image(p).pixels for p in utkface_files[::step][:200]]


def test_nearly_every_utkface_chip_has_exactly_one_face(detector, utk_sample) -> None:
    results = []
    for start in range(0, len(utk_sample), 50):
        results += detector.detect_batch(utk_sample[start : start + 50])
    exactly_one = sum(len(faces) == 1 for faces in results)
    assert exactly_one / len(utk_sample) >= 0.98


def test_batch_and_single_detection_agree(detector, utk_sample) -> None:
    batch = detector.detect_batch(utk_sample[:8])
    for image, faces in zip(utk_sample[:8], batch, strict=True):
        single = detector.detect(image)
        assert len(single) == len(faces)
        for a, b in zip(single, faces, strict=True):
            assert np.allclose(a.box, b.box, atol=1.0)


def test_thumbnails_too_small_for_a_face_have_none_beside_faces(detector, utk_sample) -> None:
    import cv2

    sizes = [(1, 1), (8, 8), (12, 12), (16, 11), (9, 14)]  # (width, height)
    thumbnails = [cv2.resize(utk_sample[0], size, interpolation=cv2.INTER_AREA) for size in sizes]
    alone = detector.detect_batch(utk_sample[:2])
    found = detector.detect_batch([*thumbnails, *utk_sample[:2]])
    assert found[: len(sizes)] == [[]] * len(sizes)
    for faces, expected in zip(found[len(sizes) :], alone, strict=True):
        assert [face.box for face in faces] == [face.box for face in expected] != []


def test_large_photos_are_detected_a_few_per_call_with_the_same_faces(
    detector: FaceDetector, crowd_files: list[Path]
) -> None:
    import cv2

    photos = [
        cv2.resize(load_image(path).pixels, (1000, 1000), interpolation=cv2.INTER_CUBIC)
        for path in crowd_files[:6]
    ]
    calls: list[int] = []
    run = detector._run_mtcnn
    detector._run_mtcnn = lambda batch, pad: (calls.append(len(batch)), run(batch, pad))[1]
    try:
        together = detector.detect_batch(photos)
    finally:
        del detector._run_mtcnn
    assert len(calls) > 1 and max(calls) < len(photos)  # 1500 x 1500 padded: a few per call
    assert sum(map(len, together)) >= len(photos)
    for photo, faces in zip(photos, together, strict=True):
        alone = detector.detect(photo)
        assert len(alone) == len(faces)
        for a, b in zip(alone, faces, strict=True):
            assert np.allclose(a.box, b.box, atol=1.0)


def test_aligned_crops_put_the_eyes_on_the_template(detector, utk_sample) -> None:
    errors = []
    for image, faces in zip(utk_sample[:40], detector.detect_batch(utk_sample[:40]), strict=True):
        for face in faces:
            crop = align_face(image, face.landmarks)
            assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
            matrix = similarity_matrix(face.landmarks)
            points = np.c_[face.landmarks, np.ones(5)] @ matrix.T
            errors.append(np.abs(points[:2] - TEMPLATE[:2]).max())
    assert len(errors) >= 38
    assert np.median(errors) < 4.0 and np.percentile(errors, 95) < 8.0 and max(errors) < 12.0


def test_realigned_crop_redetects_eyes_at_the_template(detector, utk_sample) -> None:
    """Detect again on the aligned crop: the eyes really are where the template says."""
    errors = []
    for image in utk_sample[:10]:
        faces = detector.detect(image)
        crop = align_face(image, faces[0].landmarks)
        again = detector.detect(crop)
        assert again, "the aligned face must still be a face"
        best = max(again, key=lambda f: f.score)
        errors.append(np.abs(best.landmarks[:2] - TEMPLATE[:2]).max())
    assert np.median(errors) < 6.0


def test_crowds_yield_many_faces_inside_the_image(detector, crowd_files: list[Path]) -> None:
    images = [load_image(p).pixels for p in crowd_files[:20]]
    results = detector.detect_batch(images)
    counts = [len(faces) for faces in results]
    assert sum(c >= 2 for c in counts) >= 10
    assert sum(counts) >= 40
    for image, faces in zip(images, results, strict=True):
        height, width = image.shape[:2]
        for face in faces:
            x, y, w, h = face.box
            assert x >= 0 and y >= 0 and x + w <= width and y + h <= height
            assert 0 < face.score <= 1


def test_large_images_are_downscaled_and_mapped_back(crowd_files: list[Path]) -> None:
    import cv2

    image = load_image(crowd_files[0]).pixels
    big = cv2.resize(image, (1664, 1664), interpolation=cv2.INTER_CUBIC)
    small_faces = FaceDetector().detect(image)
    big_faces = FaceDetector().detect(big)  # max_side 1024: detection runs downscaled
    assert big_faces
    centres = np.array([[f.box[0] + f.box[2] / 2, f.box[1] + f.box[3] / 2] for f in big_faces])
    for face in small_faces[:5]:
        centre = np.array([face.box[0] + face.box[2] / 2, face.box[1] + face.box[3] / 2]) * 4
        assert np.min(np.linalg.norm(centres - centre, axis=1)) < 40


# UTKFace close-ups (validation split) whose face overflows the chip: the usual border misses them.
CLOSE_UPS = (
    "26_0_0_20170113210319560.jpg.chip.jpg",
    "56_1_0_20170110175738208.jpg.chip.jpg",
    "65_0_1_20170117191903245.jpg.chip.jpg",
    "85_1_0_20170110183112103.jpg.chip.jpg",
)


def test_close_ups_missed_at_first_are_found_inside_a_wider_border(
    detector: FaceDetector, data_dir: Path
) -> None:
    images = [load_image(data_dir / "utkface" / name).pixels for name in CLOSE_UPS]
    no_retry = FaceDetector(replace(detector.settings, retry_pad_fraction=0))
    assert [len(faces) for faces in no_retry.detect_batch(images)] == [0] * len(images)
    for image, faces in zip(images, detector.detect_batch(images), strict=True):
        assert len(faces) == 1
        height, width = image.shape[:2]
        eyes = faces[0].landmarks[:2]
        assert np.all((eyes >= 0) & (eyes < [width, height]))
        assert eyes[0, 0] < eyes[1, 0]  # left eye (image left) before right eye


def test_the_retry_of_a_large_photo_runs_small_and_maps_back(
    detector: FaceDetector, data_dir: Path
) -> None:
    import cv2

    chip = load_image(data_dir / "utkface" / CLOSE_UPS[0]).pixels
    (small,) = detector.detect(chip)
    large = cv2.resize(chip, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)  # 800 x 800
    assert max(large.shape) > detector.settings.retry_max_side
    (found,) = detector.detect(large)
    # Same face, same points, to within 5% of the photo (MTCNN at another resolution).
    assert np.allclose(found.landmarks, small.landmarks * 4, atol=0.05 * 800)
