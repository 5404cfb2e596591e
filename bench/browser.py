"""The results browser on a million faces: each page's HTML time, in PostgreSQL.

Fills a throwaway PostgreSQL database (made at the newest schema by the
migrations, dropped at the end) with synthetic rows by INSERT ... SELECT
generate_series: 4 jobs, 100,000 images, 10 faces each (1,000,000 faces),
plus one real image for thumbnails. Then times, through Flask's test client
(the whole app: routing, queries, templates; no network), the median of
--repeat requests of: the jobs page, the gallery's first page, a deep keyset
page (after the 900,000th face), a filtered page and a filtered deep page.

Baseline, same process: the deep page's rows fetched with OFFSET instead of
a key, the query keyset pages replace (ratio = OFFSET / keyset). Thumbnails:
cut cold, then from the in-memory cache, then answered 304 by ETag.

    python bench/browser.py [--pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, make_url, text  # noqa: E402

from worker.db import open_database, open_for_reading  # noqa: E402
from worker.web import create_app  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
IMAGES, FACES_PER_IMAGE, JOBS = 100_000, 10, 4
BUDGET_MS = 200

FILL = [
    f"""INSERT INTO jobs (id, root, status, image_count, created_at, finished_at, scan_done,
        model_version, backend)
    SELECT g, '/synthetic/' || g, 'done', {IMAGES // JOBS}, now(), now(), true,
        'synthetic-v1', 'litert'
    FROM generate_series(1, {JOBS}) g""",
    f"""INSERT INTO images (id, job_id, path, sha256, width, height, status, face_count,
        attempts, processed_at)
    SELECT g, 1 + (g - 1) % {JOBS}, '/synthetic/' || (1 + (g - 1) % {JOBS}) || '/' || g || '.jpg',
        md5(g::text) || md5(g::text), 4000, 3000, 'done', {FACES_PER_IMAGE}, 1, now()
    FROM generate_series(1, {IMAGES}) g""",
    f"""INSERT INTO faces (id, job_id, image_id, face_index, x, y, w, h, det_confidence,
        left_eye_x, left_eye_y, right_eye_x, right_eye_y, nose_x, nose_y,
        mouth_left_x, mouth_left_y, mouth_right_x, mouth_right_y,
        gender, confidence, model_version, unsure, p_female)
    SELECT g, 1 + ((g - 1) / {FACES_PER_IMAGE}) % {JOBS}, 1 + (g - 1) / {FACES_PER_IMAGE},
        (g - 1) % {FACES_PER_IMAGE}, x, 100, 80, 100, 0.99,
        x + 25, 140, x + 55, 140, x + 40, 160, x + 28, 180, x + 52, 180,
        CASE WHEN p >= 0.5 THEN 'female' ELSE 'male' END, greatest(p, 1 - p),
        'synthetic-v1', greatest(p, 1 - p) < 0.6, p
    FROM (SELECT g, random() AS p, ((g - 1) % {FACES_PER_IMAGE}) * 350.0 AS x
          FROM generate_series(1, {IMAGES * FACES_PER_IMAGE}) g) s""",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pg",
        default=os.environ.get(
            "FACEGENDER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
        help="an administrative PostgreSQL URL; a throwaway database is made beside it",
    )
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
    name = f"facegender_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(args.pg).set(database=name).render_as_string(hide_password=False)
    photos = Path(tempfile.mkdtemp(prefix="facegender-browser-"))
    try:
        fill(url, photos)
        measure(url, args.repeat)
    finally:
        shutil.rmtree(photos)
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def fill(url: str, photos: Path) -> None:
    """The schema by migration, a million synthetic faces, one real photo with a face."""
    engine = open_database(url).kw["bind"]
    started = time.perf_counter()
    with engine.begin() as connection:
        for statement in FILL:
            connection.execute(text(statement))
        photo = photos / "face.jpg"
        shutil.copy(next(REPO.glob("examples/24_*.jpg")), photo)
        connection.execute(
            text(
                f"INSERT INTO jobs (id, root, status, image_count, created_at) "
                f"VALUES ({JOBS + 1}, :root, 'done', 1, now())"
            ),
            {"root": str(photos)},
        )
        connection.execute(
            text(
                f"INSERT INTO images (id, job_id, path, width, height, status, attempts) "
                f"VALUES ({IMAGES + 1}, {JOBS + 1}, :path, 200, 200, 'done', 1)"
            ),
            {"path": str(photo)},
        )
        connection.execute(
            text(
                f"INSERT INTO faces SELECT {IMAGES * FACES_PER_IMAGE + 1}, {JOBS + 1}, "
                f"{IMAGES + 1}, 0, 30, 40, 140, 150, 0.99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "
                "'male', 0.97, 'synthetic-v1', false, 0.03"
            )
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    print(f"filled {IMAGES * FACES_PER_IMAGE:,} faces in {time.perf_counter() - started:.1f}s")


def _median_ms(client, path: str, repeat: int) -> tuple[float, float]:
    """(first request, median of the next `repeat`) in ms; every answer must be 200."""
    times = []
    for _ in range(repeat + 1):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return times[0], statistics.median(times[1:])


def measure(url: str, repeat: int) -> None:
    sessions = open_for_reading(url)
    client = create_app(sessions).test_client()
    with sessions() as session:
        deep = session.execute(
            text("SELECT confidence, id FROM faces ORDER BY confidence, id OFFSET 900000 LIMIT 1")
        ).one()
        filtered = "job=2&gender=female&unsure=exclude&min_confidence=0.7"
        deep_filtered = session.execute(
            text(
                "SELECT confidence, id FROM faces WHERE job_id = 2 AND gender = 'female' "
                "AND NOT unsure AND confidence >= 0.7 ORDER BY confidence, id "
                "OFFSET 50000 LIMIT 1"
            )
        ).one()
    pages = {
        "jobs": "/",
        "gallery, first page": "/faces",
        "gallery, after face 900,000": f"/faces?after={deep.confidence!r}:{deep.id}",
        "filtered, first page": f"/faces?{filtered}",
        "filtered, after 50,000 matches": f"/faces?{filtered}"
        f"&after={deep_filtered.confidence!r}:{deep_filtered.id}",
        "image view": "/images/12345",
    }
    print(f"{'page':<34}{'first ms':>10}{'median ms':>11}  (budget {BUDGET_MS} ms)")
    medians = {}
    for label, path in pages.items():
        first, median = _median_ms(client, path, repeat)
        medians[label] = median
        verdict = "ok" if median < BUDGET_MS else "OVER"
        print(f"{label:<34}{first:>10.1f}{median:>11.1f}  {verdict}")

    offset_ms = []
    with sessions() as session:
        for _ in range(repeat):
            started = time.perf_counter()
            session.execute(
                text(
                    "SELECT f.id FROM faces f JOIN images i ON i.id = f.image_id "
                    "ORDER BY f.confidence, f.id OFFSET 900000 LIMIT 60"
                )
            ).all()
            offset_ms.append((time.perf_counter() - started) * 1000)
    offset = statistics.median(offset_ms)
    keyset = medians["gallery, after face 900,000"]
    print(
        f"baseline: the same deep page's rows by OFFSET (query alone) {offset:.1f} ms; "
        f"keyset page (whole HTML) {keyset:.1f} ms: {offset / keyset:.1f}x faster"
    )

    thumb = f"/faces/{IMAGES * FACES_PER_IMAGE + 1}/thumb.jpg"
    started = time.perf_counter()
    response = client.get(thumb)
    cold = (time.perf_counter() - started) * 1000
    _, cached = _median_ms(client, thumb, repeat)
    started = time.perf_counter()
    revalidated = client.get(thumb, headers={"If-None-Match": response.headers["ETag"]})
    not_modified = (time.perf_counter() - started) * 1000
    assert revalidated.status_code == 304
    print(
        f"thumbnail: cut {cold:.1f} ms, cached {cached:.1f} ms ({cold / cached:.1f}x), "
        f"304 by ETag {not_modified:.1f} ms"
    )
    sessions.kw["bind"].dispose()


if __name__ == "__main__":
    main()
