"""MTCNN on ONNX Runtime finds what the `mtcnn` package (TensorFlow) finds, without TensorFlow.

The package is the reference here, so these tests import TensorFlow; the
serving detector must not, which a fresh subprocess checks.
"""

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from detector import FaceDetector, load_image
from detector.mtcnn_boxes import nms
from detector.mtcnn_canvas import tiled
from detector.mtcnn_images import (
    area_weights,
    crop_and_resize,
    level,
    level_size,
    normalise,
    stacked,
)
from detector.mtcnn_onnx import MtcnnNetworks


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    found = FaceDetector()
    found.load()
    return found


@pytest.fixture(scope="module")
def keras_networks() -> list:
    from mtcnn import MTCNN

    return [stage.model for stage in MTCNN(device="CPU:0").stages]


@pytest.mark.parametrize("method", ["union", "min"])
@pytest.mark.parametrize("sort", [True, False])
def test_nms_keeps_exactly_what_the_package_keeps(method: str, sort: bool) -> None:
    from mtcnn.utils.bboxes import smart_nms_from_bboxes

    rng = np.random.default_rng(7)
    for trial in range(62):
        # The last two: a crowd's worth of proposals, compared a slice of pairs at a time.
        count = int(rng.integers(1, 200)) if trial < 60 else 3000
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
        assert np.array_equal(nms(boxes.copy(), threshold, method, sort), expected), trial


def test_onnx_networks_compute_the_keras_networks(keras_networks: list) -> None:
    pnet, rnet, onet = keras_networks
    nets = MtcnnNetworks(threads=1)
    rng = np.random.default_rng(3)
    for shape in [(2, 37, 53, 3), (1, 12, 12, 3), (3, 101, 64, 3)]:  # odd sizes: "same" pooling
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        offsets, scores = nets.pnet(np.ascontiguousarray(normalise(pixels).transpose(0, 3, 1, 2)))
        expected = [np.asarray(t) for t in pnet(normalise(pixels))]
        assert np.allclose(offsets.transpose(0, 2, 3, 1), expected[0], atol=1e-5)
        assert np.allclose(scores, expected[1][..., 1], atol=1e-5)
    crops = rng.uniform(-1, 1, (40, 24, 24, 3)).astype(np.float32)
    expected = [np.asarray(t) for t in rnet(crops)]
    found = nets.rnet(crops)
    assert np.allclose(found[0], expected[0], atol=1e-5)
    assert np.allclose(found[1], expected[1][:, 1], atol=1e-5)
    crops = rng.uniform(-1, 1, (40, 48, 48, 3)).astype(np.float32)
    expected = [np.asarray(t) for t in onet(crops)]
    found = nets.onet(crops)
    for ours, theirs in zip(found[:2], expected[:2], strict=True):
        assert np.allclose(ours, theirs, atol=1e-5)
    assert np.allclose(found[2], expected[2][:, 1], atol=1e-5)


def test_pyramid_levels_and_crops_are_tensorflows(crowd_files: list[Path]) -> None:
    """PNet's levels made from the image alone are the package's from the padded image."""
    import tensorflow as tf

    pixels = load_image(crowd_files[0]).pixels
    pad = 104
    image = normalise(np.pad(pixels, ((pad, pad), (pad, pad), (0, 0))))
    height, width = image.shape[:2]
    inside_rows, inside_cols = range(pad, height - pad), range(pad, width - pad)
    for index, scale in enumerate(0.6 * 0.709 ** np.arange(8)):
        # The package's scale_images: a float size, truncated by TensorFlow.
        expected = tf.image.resize(image[None], np.asarray([height, width]) * scale, "area")
        size = level_size(height, width, scale)
        assert expected.shape[1:3] == size
        rows, cols = range(size[0]), range(size[1])
        if index == 1:  # and a part of a level
            rows, cols = range(40, 200), range(13, 180)
        row_weights = area_weights(height, size[0], rows, inside_rows)
        col_weights = area_weights(width, size[1], cols, inside_cols)
        found = level(stacked(pixels[None]), 1, row_weights, col_weights)[0].transpose(1, 2, 0)
        wanted = expected[0].numpy()[rows.start : rows.stop, cols.start : cols.stop]
        assert np.abs(found - wanted).max() * 128 < 0.01  # grey levels
    rng = np.random.default_rng(5)
    corner = rng.uniform(-60, 416, (300, 2))  # some boxes reach outside: extrapolated to 0
    boxes = np.c_[corner, corner + rng.uniform(4, 250, (300, 1))]
    corners = (boxes / np.array([[height, width, height, width]])).astype(np.float32)
    for size in (24, 48):
        expected = tf.image.crop_and_resize(
            image[None], corners, np.zeros(300, np.int32), (size,) * 2
        )
        found = crop_and_resize(image, corners, size)
        assert np.abs(found - expected.numpy()).max() * 128 < 1e-3  # grey levels


def test_levels_tiled_on_canvases_score_as_each_level_alone(data_dir: Path) -> None:
    """PNet on a canvas of levels of many sizes (odd and even sides, several canvases and rows
    of levels) gives each level's output cells bit for bit as PNet on the level alone."""
    networks = MtcnnNetworks(threads=1)
    webfaces = sorted((data_dir / "webfaces").glob("*.jpg"))[::150]
    levels = []
    for path in webfaces:
        pixels = load_image(path).pixels
        height, width = pixels.shape[:2]
        for scale in (0.6, 0.3, 0.15):
            size = level_size(height, width, scale)
            rows = area_weights(height, size[0], range(size[0]), range(height))
            cols = area_weights(width, size[1], range(size[1]), range(width))
            levels.append(level(stacked(pixels[None]), 1, rows, cols)[0])
    assert len({(lvl.shape[1] % 2, lvl.shape[2] % 2) for lvl in levels}) == 4
    canvases = tiled(levels, 64 * 64)
    assert 1 < len(canvases) < len(levels)
    for canvas in canvases:
        offsets, scores = networks.pnet_packed(canvas.pixels, canvas.mask)
        for index in np.unique(canvas.owner[canvas.owner >= 0]):
            alone_offsets, alone_scores = networks.pnet(levels[index][None])
            top, left = canvas.origins[index]
            cells = (
                slice(top, top + alone_scores.shape[1]),
                slice(left, left + alone_scores.shape[2]),
            )
            assert (canvas.owner[cells] == index).all()
            assert (canvas.owner == index).sum() == alone_scores[0].size
            assert np.array_equal(scores[0][cells], alone_scores[0])
            assert np.array_equal(offsets[0][(slice(None), *cells)], alone_offsets[0])


def _sample(data_dir: Path, utkface_files: list[Path], crowd_files: list[Path]) -> list[Path]:
    webfaces = sorted((data_dir / "webfaces").glob("*.jpg"))
    return utkface_files[::180][:120] + crowd_files[::5] + webfaces[::23][:100]


def _pairs(found: np.ndarray, expected: np.ndarray) -> list[tuple[int, int]]:
    """One-to-one pairs (found row, expected row) of one image at IoU >= 0.5, best first."""
    a, b = found[:, None, 1:5], expected[None, :, 1:5]
    inter = np.prod(
        np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None),
        axis=-1,
    )
    area = lambda boxes: np.prod(boxes[..., 2:] - boxes[..., :2], axis=-1)  # noqa: E731
    iou = inter / (area(a) + area(b) - inter)
    pairs: list[tuple[int, int]] = []
    for flat in np.argsort(iou, axis=None)[::-1]:
        i, j = np.unravel_index(flat, iou.shape)
        if iou[i, j] < 0.5:
            break
        if all(i != p and j != q for p, q in pairs):
            pairs.append((int(i), int(j)))
    return pairs


def test_faces_match_the_mtcnn_package_on_real_photos(
    detector: FaceDetector, data_dir: Path, utkface_files: list[Path], crowd_files: list[Path]
) -> None:
    """UTKFace chips, crowds and mixed-size web faces, each prepared as the detector does."""
    from mtcnn import MTCNN

    package = MTCNN(device="CPU:0")
    s = detector.settings
    by_shape: dict[tuple[tuple[int, ...], int], list[np.ndarray]] = defaultdict(list)
    for path in _sample(data_dir, utkface_files, crowd_files):
        image, _, pad = detector._prepare(load_image(path).pixels, s.pad_fraction, s.max_side)
        by_shape[image.shape, pad].append(image)
    found_count = expected_count = matched = 0
    box_errors, landmark_errors = [], []
    for (_, pad), images in by_shape.items():
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
        found = detector._run_mtcnn(images, [pad] * len(images))
        for index in range(len(images)):
            ours, theirs = found[found[:, 0] == index], expected[expected[:, 0] == index]
            pairs = _pairs(ours, theirs)
            found_count, expected_count = found_count + len(ours), expected_count + len(theirs)
            matched += len(pairs)
            for i, j in pairs:
                box_errors.append(np.abs(ours[i, 1:5] - theirs[j, 1:5]).max())
                landmark_errors.append(np.abs(ours[i, 6:16] - theirs[j, 6:16]).max())
    print(
        f"faces: {found_count} found, {expected_count} by the package, {matched} matched; "
        f"max error box {max(box_errors):.4f} px, landmarks {max(landmark_errors):.4f} px"
    )
    assert expected_count >= 250
    assert matched >= 0.99 * expected_count and matched >= 0.99 * found_count
    assert np.mean(np.array(box_errors) <= 1) >= 0.99
    assert np.mean(np.array(landmark_errors) <= 1) >= 0.99


def test_mixed_sizes_leave_no_state_behind(detector: FaceDetector, data_dir: Path) -> None:
    """Nothing in the detector grows with the number of image sizes it has seen."""

    def state(obj: object, depth: int = 0) -> list[int]:
        sizes = []
        for value in vars(obj).values():
            if isinstance(value, dict | list | set | tuple):
                sizes.append(len(value))
            elif hasattr(value, "__dict__") and depth < 2:
                sizes += state(value, depth + 1)
        return sizes

    webfaces = sorted((data_dir / "webfaces").glob("*.jpg"))
    images = [load_image(p).pixels for p in webfaces[:200:5]]
    assert len({image.shape for image in images}) >= 30
    detector.detect_batch(images[:5])
    before = state(detector)
    for image in images:
        detector.detect(image)
    assert state(detector) == before


def test_the_serving_detector_does_not_import_tensorflow(crowd_files: list[Path]) -> None:
    script = (
        "import sys\n"
        "from detector import FaceDetector, load_image\n"
        f"faces = FaceDetector().detect(load_image({str(crowd_files[0])!r}).pixels)\n"
        "assert faces, 'no face found'\n"
        "heavy = {'tensorflow', 'keras', 'mtcnn', 'jax', 'torch'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


_MEMORY_SCRIPT = """
import sys
import cv2
from detector import FaceDetector, load_image

def high_water_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024

# Upscaled photos are noisy: thousands of PNet proposals each, the worst case for memory.
photos = [
    cv2.resize(load_image(path).pixels, (1024, 768), interpolation=cv2.INTER_CUBIC)
    for path in sys.argv[1:]
]
detector = FaceDetector()
detector.load()
loaded = high_water_mib()
detector.detect_batch(photos[:1])
one = high_water_mib()
detector.detect_batch(photos)
print(one - loaded, high_water_mib() - loaded)
"""


def test_detection_memory_is_bounded_per_call(crowd_files: list[Path]) -> None:
    """A 1024 x 768 photo, and a batch of 8, each add at most a few hundred MB (fresh process).

    The high-water mark after loading is the baseline, so the first call's
    set-up counts; an all-pairs NMS over a crowd's proposals once took 1 GB here.
    """
    names = ["0_Parade_Parade_0_275.jpg"] + [p.name for p in crowd_files[::29][:7]]
    paths = [str(crowd_files[0].parent / name) for name in names]
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, *paths],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    one, batch = map(float, done.stdout.split())
    print(f"detection peak over the loaded detector: one photo {one:.0f} MiB, 8 photos {batch:.0f}")
    assert one < 300
    assert batch < 300


def test_a_second_start_loads_the_cached_graphs_without_onnx(
    crowd_files: list[Path], tmp_path: Path
) -> None:
    """The first start builds and caches the graphs; the next, in a fresh process, only reads."""
    script = (
        "import sys\n"
        "from detector import FaceDetector, load_image\n"
        f"faces = FaceDetector().detect(load_image({str(crowd_files[3])!r}).pixels)\n"
        "print('onnx' in sys.modules, [[round(v, 3) for v in f.box] for f in faces])\n"
    )
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "FACEGENDER_CACHE": str(tmp_path)}
    runs = [
        subprocess.run(
            [sys.executable, "-c", script], cwd=repo, env=env, capture_output=True, text=True
        )
        for _ in range(2)
    ]
    assert all(done.returncode == 0 for done in runs), runs[-1].stderr
    (first_onnx, first_faces), (second_onnx, second_faces) = (
        done.stdout.split(" ", 1) for done in runs
    )
    assert (first_onnx, second_onnx) == ("True", "False")
    assert first_faces == second_faces and first_faces.strip() != "[]"
    assert len(list((tmp_path / "mtcnn").glob("*.onnx"))) == 4  # PNet alone and tiled, RNet, ONet
