"""`facegender serve` as a user meets it: a real server process, a real browser, a real database.

The database is filled by a real `facegender run` on the README's examples/;
the server is the real `facegender serve` process (waitress) on a free port;
Debian's headless Chromium, driven by Selenium, loads the pages, filters,
pages by key and downloads an export. Plain HTTP requests check the rules a
browser would not show: files outside a job's root are never served.
"""

import csv
import io
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, unavailable

FACEGENDER = str(Path(sys.executable).parent / "facegender")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, Path]:
    """(examples/ copied, the SQLite file `facegender run` filled from it)."""
    base = tmp_path_factory.mktemp("web")
    folder = base / "photos"
    shutil.copytree(REPO / "examples", folder, ignore=shutil.ignore_patterns("*.md"))
    database = base / "results.db"
    done = subprocess.run(
        [FACEGENDER, "run", str(folder), "--db", f"sqlite:///{database}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("job 1: 11 done, 0 errors"), done.stdout
    return folder, database


@pytest.fixture(scope="module")
def server(photos) -> Iterator[str]:
    """The base URL of a `facegender serve` process on a free port of 127.0.0.1."""
    _, database = photos
    process = subprocess.Popen(
        [FACEGENDER, "serve", "--db", f"sqlite:///{database}", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("serving http://127.0.0.1:"), line + process.stderr.read()
        yield line.split()[1].rstrip("/")
    finally:
        process.terminate()
        process.wait(timeout=30)


def _db(database: Path, sql: str, *params) -> list[tuple]:
    with sqlite3.connect(database) as connection:
        return connection.execute(sql, params).fetchall()


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


# Plain HTTP: what may be served, and how it is cached.


def test_a_file_outside_its_jobs_root_is_never_served(server, photos, tmp_path):
    folder, database = photos
    ((image_id, path, face_id),) = _db(
        database,
        "SELECT i.id, i.path, min(f.id) FROM images i JOIN faces f ON f.image_id = i.id "
        "WHERE i.path LIKE '%24_0_2_%' GROUP BY i.id",
    )
    thumb, picture = f"{server}/faces/{face_id}/thumb.jpg", f"{server}/images/{image_id}/image.jpg"
    assert _get(thumb)[0] == 200 and _get(picture)[0] == 200  # served while inside the root
    outside = tmp_path / "outside.jpg"  # a real JPEG: refused for where it is, not what it is
    shutil.copy(path, outside)
    link = folder / "link-to-outside.jpg"
    link.symlink_to(outside)
    shutil.copy(path, folder.parent / outside.name)  # what root/../outside.jpg names
    try:
        for stored in (str(outside), f"{folder}/../{outside.name}", str(link), "/etc/passwd"):
            _db(database, "UPDATE images SET path = ? WHERE id = ?", stored, image_id)
            for url in (thumb, picture):
                status, _, body = _get(url)
                assert status == 404, (stored, url, status)
                assert b"\xff\xd8" not in body[:2]
            status, _, page = _get(f"{server}/images/{image_id}")  # the page itself still shows
            assert status == 200 and stored.encode() in page
    finally:
        _db(database, "UPDATE images SET path = ? WHERE id = ?", path, image_id)
        link.unlink()
    assert _get(thumb)[0] == 200


def test_only_numeric_ids_reach_the_app(server):
    for url in ("/faces/../etc/thumb.jpg", "/faces/x/thumb.jpg", "/images/%2Fetc%2Fpasswd"):
        assert _get(server + url)[0] == 404, url
    assert _get(f"{server}/faces/999999/thumb.jpg")[0] == 404
    assert _get(f"{server}/faces?after=nan:1")[0] == 400
    assert _get(f"{server}/faces?gender=robot")[0] == 400
    assert _get(f"{server}/faces?limit=100000")[0] == 400


def test_thumbnails_are_cut_from_the_box_and_cached(server, photos):
    from PIL import Image as PILImage

    _, database = photos
    ((face_id, w, h),) = _db(
        database,
        "SELECT f.id, f.w, f.h FROM faces f JOIN images i ON i.id = f.image_id "
        "WHERE i.path LIKE '%Parade_0_611%' ORDER BY f.w LIMIT 1",
    )
    status, headers, body = _get(f"{server}/faces/{face_id}/thumb.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert "max-age" in headers["Cache-Control"] and headers["ETag"]
    thumb = PILImage.open(io.BytesIO(body))
    side = max(w, h) * 1.8  # the box and its margin, a small face in a 416-pixel photo
    assert abs(max(thumb.size) - min(side, 160)) <= 2, (thumb.size, side)
    again = _get(f"{server}/faces/{face_id}/thumb.jpg", {"If-None-Match": headers["ETag"]})
    assert again[0] == 304 and again[2] == b""


def test_exports_hold_the_filtered_rows_in_review_order(server, photos):
    import json

    _, database = photos
    expected = _db(
        database,
        "SELECT f.id, i.path, f.confidence FROM faces f JOIN images i ON i.id = f.image_id "
        "WHERE f.gender = 'male' AND f.confidence >= 0.9 ORDER BY f.confidence, f.id",
    )
    assert 0 < len(expected) < 18
    query = "?gender=male&min_confidence=0.9"
    status, headers, body = _get(f"{server}/export.json{query}")
    assert status == 200 and "attachment" in headers["Content-Disposition"]
    document = json.loads(body)
    rows = [(r["face_id"], r["path"], r["confidence"]) for r in document["rows"]]
    assert rows == expected
    assert document["filter"] == {"gender": "male", "min_confidence": "0.9"}
    assert [j["job_id"] for j in document["jobs"]] == [1]


# In the browser.


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's headless Chromium through its chromedriver, downloading into a temp folder."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        unavailable(f"{CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.downloads = downloads  # type: ignore[attr-defined]
    try:
        yield driver
    finally:
        driver.quit()


def _faces_shown(browser) -> list[tuple[int, str, float]]:
    from selenium.webdriver.common.by import By

    return [
        (
            int(f.get_attribute("data-face")),
            f.get_attribute("data-gender"),
            float(f.get_attribute("data-confidence")),
        )
        for f in browser.find_elements(By.CSS_SELECTOR, "figure.face")
    ]


def _images_loaded(browser) -> bool:
    return browser.execute_script(
        "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"
    )


def _wait(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_jobs_page_shows_the_job_and_its_progress(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    row = browser.find_element(By.ID, "job-1")
    cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
    assert cells[2] == "done" and cells[4:8] == ["11", "0", "0", "18"], cells
    row.find_element(By.LINK_TEXT, "faces").click()
    assert browser.current_url.endswith("/faces?job=1")
    assert len(_faces_shown(browser)) == 18


def test_gender_filter_changes_the_gallery(browser, server, photos):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _, database = photos
    browser.get(server + "/faces")
    everyone = _faces_shown(browser)
    assert len(everyone) == 18 and {g for _, g, _ in everyone} == {"male", "female"}
    assert [c for _, _, c in everyone] == sorted(c for _, _, c in everyone)  # review order
    _wait(lambda: _images_loaded(browser))
    Select(browser.find_element(By.NAME, "gender")).select_by_visible_text("female")
    browser.find_element(By.ID, "apply").click()
    _wait(lambda: "gender=female" in browser.current_url)
    women = _faces_shown(browser)
    expected = _db(database, "SELECT id FROM faces WHERE gender = 'female' ORDER BY confidence, id")
    assert [f for f, _, _ in women] == [i for (i,) in expected]
    assert {g for _, g, _ in women} == {"female"}
    _wait(lambda: _images_loaded(browser))


def test_keyset_pages_walk_every_face_once_in_order(browser, server, photos):
    from selenium.common.exceptions import NoSuchElementException
    from selenium.webdriver.common.by import By

    _, database = photos
    browser.get(server + "/faces?limit=5")
    pages = [_faces_shown(browser)]
    while True:
        try:
            browser.find_element(By.ID, "next").click()
        except NoSuchElementException:
            break
        assert "after=" in browser.current_url and "offset" not in browser.current_url
        pages.append(_faces_shown(browser))
    assert [len(p) for p in pages] == [5, 5, 5, 3]
    expected = [i for (i,) in _db(database, "SELECT id FROM faces ORDER BY confidence, id")]
    assert [f for page in pages for f, _, _ in page] == expected
    browser.find_element(By.ID, "prev").click()
    assert _faces_shown(browser) == pages[-2]


def test_export_downloads_the_filtered_rows(browser, server, photos):
    from selenium.webdriver.common.by import By

    _, database = photos
    browser.get(server + "/faces?gender=female&max_confidence=0.99")
    browser.find_element(By.ID, "export-csv").click()
    target = browser.downloads / "faces.csv"
    _wait(lambda: target.exists() and target.stat().st_size > 0)
    with target.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    expected = _db(
        database,
        "SELECT f.id, i.path, f.face_index, f.x, f.gender, f.confidence, f.model_version "
        "FROM faces f JOIN images i ON i.id = f.image_id "
        "WHERE f.gender = 'female' AND f.confidence <= 0.99 ORDER BY f.confidence, f.id",
    )
    assert expected
    got = [
        (
            int(r["face_id"]),
            r["path"],
            int(r["face_index"]),
            float(r["x"]),
            r["gender"],
            float(r["confidence"]),
            r["model_version"],
        )
        for r in rows
    ]
    assert got == expected


def test_image_view_draws_every_box(browser, server, photos):
    from selenium.webdriver.common.by import By

    _, database = photos
    ((image_id, count),) = _db(
        database, "SELECT id, face_count FROM images WHERE path LIKE '%Parade_0_611%'"
    )
    assert count >= 3
    browser.get(f"{server}/faces")
    face = next(f for f, _, _ in _faces_shown(browser) if _image_of(database, f) == image_id)
    browser.find_element(By.CSS_SELECTOR, f'figure[data-face="{face}"] a').click()
    _wait(lambda: f"/images/{image_id}" in browser.current_url)
    _wait(lambda: _images_loaded(browser))
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg g.box rect")) == count
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.faces tbody tr")) == count
    assert "selected" in browser.find_element(By.ID, f"face-{face}").get_attribute("class")


def _image_of(database: Path, face_id: int) -> int:
    ((image_id,),) = _db(database, "SELECT image_id FROM faces WHERE id = ?", face_id)
    return image_id


def test_unsure_and_model_filters_select_their_rows(server, photos):
    import json

    _, database = photos
    ((face_id, version),) = _db(
        database, "SELECT id, model_version FROM faces ORDER BY confidence DESC LIMIT 1"
    )
    flags = _db(database, "SELECT id, unsure FROM faces")
    _db(database, "UPDATE faces SET unsure = (id = ?)", face_id)  # exactly one flagged face
    try:
        shown = {}
        for unsure in ("only", "exclude", "all"):
            body = _get(f"{server}/export.json?unsure={unsure}")[2]
            shown[unsure] = [(r["face_id"], r["unsure"]) for r in json.loads(body)["rows"]]
        assert shown["only"] == [(face_id, True)]
        assert len(shown["exclude"]) == 17 and not any(u for _, u in shown["exclude"])
        assert sorted(shown["all"]) == sorted(shown["only"] + shown["exclude"])
        gallery = _get(f"{server}/faces?unsure=only")[2].decode()
        assert gallery.count("<figure") == 1 and 'class="flag">unsure' in gallery
    finally:
        for row_id, unsure in flags:
            _db(database, "UPDATE faces SET unsure = ? WHERE id = ?", unsure, row_id)
    for model, count in ((version, 18), ("another-model", 0)):
        body = _get(f"{server}/export.json?model_version={urllib.parse.quote(model)}")[2]
        assert len(json.loads(body)["rows"]) == count


def test_thumbnails_of_a_big_exif_rotated_photo_decode_reduced_and_upright(utkface_files, tmp_path):
    """Boxes are in upright original pixels: the thumbnail of a box on a 4000x3000 photo
    stored sideways (EXIF orientation 6), decoded at a fraction of its size, shows the
    same pixels as a crop of the whole upright decode."""
    from PIL import Image as PILImage

    from detector import load_image
    from worker.web import pictures

    upright = PILImage.new("RGB", (4000, 3000), (90, 120, 60))
    face = PILImage.open(utkface_files[50]).convert("RGB").resize((1200, 1200))
    upright.paste(face, (2500, 900))  # the box below, in upright pixels
    stored = upright.transpose(PILImage.Transpose.ROTATE_90)  # orientation 6 turns it back
    exif = PILImage.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    stored.save(path, quality=95, exif=exif)
    box = (2700.0, 1100.0, 800.0, 800.0)
    real = pictures.servable_path(str(path), None, str(tmp_path))
    thumb = np.asarray(
        PILImage.open(
            io.BytesIO(pictures.thumbnail(real, pictures.file_identity(real), box, 4000))
        ),
        np.float32,
    )
    whole = load_image(path).pixels
    assert whole.shape == (3000, 4000, 3)
    side = 800 * (1 + 2 * pictures.MARGIN)
    left, top = round(2700 + 400 - side / 2), round(1100 + 400 - side / 2)
    crop = PILImage.fromarray(whole[top : top + round(side), left : left + round(side)])
    expected = np.asarray(crop.resize(thumb.shape[1::-1], PILImage.Resampling.BOX), np.float32)
    assert thumb.shape[:2] == (160, 160)
    assert np.abs(thumb - expected).mean() < 6
    turned = np.asarray(crop.transpose(PILImage.Transpose.ROTATE_90).resize((160, 160)))
    assert np.abs(thumb - turned).mean() > 3 * np.abs(thumb - expected).mean()
