"""Large photos decode reduced (JPEG draft, or a resize for other formats) and say by how much."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector import load_image
from tests.badfiles import write_exif_rotated


@pytest.fixture(scope="module")
def photo(crowd_files: list[Path]) -> Image.Image:
    """A real crowd photo upscaled to 4,400 x 3,300 (14.5 MP)."""
    return Image.open(crowd_files[3]).convert("RGB").resize((4400, 3300), Image.Resampling.BICUBIC)


def test_large_jpeg_decodes_at_the_largest_reduction_keeping_min_side(photo, tmp_path):
    path = tmp_path / "large.jpg"
    photo.save(path, quality=90)
    whole = load_image(path)
    assert (whole.width, whole.height, whole.scale) == (4400, 3300, 1.0)
    assert whole.pixels.shape == (3300, 4400, 3)
    reduced = load_image(path, min_side=1024)  # 4400 / 4 = 1100 >= 1024; / 8 would be 550
    assert (reduced.width, reduced.height, reduced.scale) == (4400, 3300, 0.25)
    assert reduced.pixels.shape == (825, 1100, 3)
    assert reduced.sha256 == whole.sha256  # the file's hash, however it was decoded
    # The same picture: a box-filtered copy of the whole decode matches the reduced one.
    boxed = whole.pixels.reshape(825, 4, 1100, 4, 3).mean(axis=(1, 3))
    assert np.abs(boxed - reduced.pixels.astype(np.float64)).mean() < 3.0
    assert load_image(path, min_side=4000).scale == 1.0  # no reduction keeps 4,000


def test_exif_rotated_large_jpeg_reports_upright_original_size(photo, tmp_path):
    path = tmp_path / "rotated.jpg"
    photo.save(tmp_path / "stored.jpg", quality=90)
    write_exif_rotated(tmp_path / "stored.jpg", path)
    assert Image.open(path).size == (3300, 4400)  # stored on its side
    loaded = load_image(path, min_side=1024)
    assert (loaded.width, loaded.height, loaded.scale) == (4400, 3300, 0.25)
    assert loaded.pixels.shape == (825, 1100, 3)


def test_large_png_is_resized_after_decoding(photo, tmp_path):
    path = tmp_path / "large.png"
    photo.resize((2200, 1650)).save(path)
    loaded = load_image(path, min_side=1024)
    assert (loaded.width, loaded.height) == (2200, 1650)
    assert loaded.pixels.shape == (768, 1024, 3)
    assert loaded.scale == pytest.approx(1024 / 2200)
