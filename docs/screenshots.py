"""Make the README's screenshots of `facegender serve` on the examples/ images.

Runs `facegender run` on a copy of examples/ into a temporary SQLite file,
starts `facegender serve` on it, and saves the gallery and the image view of
the busiest photo from Debian's headless Chromium as docs/*.png (palette
PNGs, a few hundred KB at most).

    python docs/screenshots.py
"""

import io
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

DOCS = Path(__file__).resolve().parent
FACEGENDER = str(Path(sys.executable).parent / "facegender")


def main() -> None:
    with tempfile.TemporaryDirectory() as temp:
        photos = Path(temp) / "examples"
        shutil.copytree(DOCS.parent / "examples", photos, ignore=shutil.ignore_patterns("*.md"))
        database = Path(temp) / "results.db"
        url = f"sqlite:///{database}"
        subprocess.run([FACEGENDER, "run", str(photos), "--db", url], check=True)
        with sqlite3.connect(database) as connection:
            (busiest,) = connection.execute(
                "SELECT id FROM images ORDER BY face_count DESC, id LIMIT 1"
            ).fetchone()
        server = subprocess.Popen(
            [FACEGENDER, "serve", "--db", url, "--port", "0"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            base = server.stdout.readline().split()[1].rstrip("/")
            shoot(f"{base}/faces", DOCS / "gallery.png", Path(temp) / "profile-1")
            shoot(f"{base}/images/{busiest}", DOCS / "image.png", Path(temp) / "profile-2")
        finally:
            server.terminate()
            server.wait(timeout=30)


def shoot(url: str, target: Path, profile: Path) -> None:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1100,760",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url)
        driver.execute_async_script(
            "const done = arguments[0];"
            "Promise.all([...document.images].map(i => i.decode().catch(() => null)))"
            ".then(() => done())"
        )
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    Image.open(io.BytesIO(png)).convert("RGB").quantize(256).save(target, optimize=True)
    print(f"{target}: {target.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
