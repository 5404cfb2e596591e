"""Every odd or broken file either loads as upright RGB uint8 or fails with its own reason."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector import ImageLoadError, load_image
from detector.loading import decode_image
from tests.badfiles import build_bad_corpus, write_exif_rotated


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, utkface_files: list[Path]):
    folder = tmp_path_factory.mktemp("corpus")
    return build_bad_corpus(folder, utkface_files[:4])


def test_each_bad_file_fails_with_its_own_reason(corpus) -> None:
    for item in (e for e in corpus if e.error_code):
        with pytest.raises(ImageLoadError) as info:
            load_image(item.path)
        assert info.value.reason == item.error_code, item.path.name
        assert info.value.message, item.path.name


def test_each_odd_but_valid_file_becomes_rgb_uint8(corpus) -> None:
    for item in (e for e in corpus if e.error_code is None):
        loaded = load_image(item.path)
        assert loaded.pixels.dtype == np.uint8, item.path.name
        assert loaded.pixels.shape == (*item.size[::-1], 3), item.path.name
        assert len(loaded.sha256) == 64


def test_sixteen_bit_keeps_its_brightness(corpus, utkface_files: list[Path]) -> None:
    reference = np.asarray(Image.open(utkface_files[0]).convert("L"), dtype=np.float64)
    sixteen = next(e.path for e in corpus if e.path.name == "sixteen.png")
    loaded = load_image(sixteen).pixels[:, :, 0].astype(np.float64)
    assert abs(loaded.mean() - reference.mean()) < 1.0


def test_alpha_is_composited_not_dropped(corpus) -> None:
    alpha = next(e.path for e in corpus if e.path.name == "alpha.png")
    raw = np.asarray(Image.open(alpha).convert("RGB"), dtype=np.float64)
    loaded = load_image(alpha).pixels.astype(np.float64)
    # 200/255 opaque over white: every pixel moves towards white.
    assert (loaded >= raw - 1).all() and loaded.mean() > raw.mean() + 5


def test_exif_orientation_is_applied(tmp_path: Path, utkface_files: list[Path]) -> None:
    target = tmp_path / "rotated.jpg"
    upright = Image.open(utkface_files[0])
    wide = upright.crop((0, 0, 200, 120))  # non-square, so orientation shows in the shape
    wide.save(tmp_path / "wide.jpg")
    write_exif_rotated(tmp_path / "wide.jpg", target)
    assert Image.open(target).size == (120, 200)  # stored on its side
    loaded = load_image(target)
    assert (loaded.width, loaded.height) == (200, 120)
    assert loaded.pixels.shape == (120, 200, 3)


def test_pixel_cap_is_configurable(utkface_files: list[Path]) -> None:
    with pytest.raises(ImageLoadError) as info:
        load_image(utkface_files[0], max_pixels=100 * 100)
    assert info.value.reason == "too_large"


def test_both_jpeg_decoders_give_the_same_pixels(
    tmp_path: Path, utkface_files: list[Path], crowd_files: list[Path]
) -> None:
    """A complete JPEG decodes through OpenCV, one with bytes after its end marker (as some
    phones write) through Pillow: the same upright pixels, whole, reduced and EXIF-rotated."""
    write_exif_rotated(crowd_files[0], tmp_path / "rotated.jpg")
    Image.open(crowd_files[1]).resize((2400, 1800)).save(tmp_path / "large.jpg", quality=90)
    cases = [(utkface_files[0], None), (crowd_files[2], None), (tmp_path / "rotated.jpg", None)]
    cases += [(tmp_path / "large.jpg", None), (tmp_path / "large.jpg", 500)]
    for path, min_side in cases:
        data = path.read_bytes()
        assert data.endswith(b"\xff\xd9")
        plain = decode_image(data, min_side=min_side)
        trailing = decode_image(data + b"trailer written by a phone", min_side=min_side)
        assert np.array_equal(plain.pixels, trailing.pixels), (path.name, min_side)
        assert (plain.width, plain.height, plain.scale) == (
            trailing.width,
            trailing.height,
            trailing.scale,
        )
    assert plain.scale == 0.25 and plain.pixels.shape == (450, 600, 3)
