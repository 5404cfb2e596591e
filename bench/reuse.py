"""Content-addressed reuse: `run` on a library again after new photos arrived, in one process.

    python bench/reuse.py [--limit N] [--new 10] [--db URL]

The webfaces crops (every one, or the first --limit) are copied to a
temporary folder and run once (`run_folder`, models loaded first: start-up
excluded); then --new UTKFace chips are added and the folder is run again,
which makes a new job whose known files get their rows copied. Prints both
wall times and their ratio (the issue asks >= 20x), and a third run with
reuse off as the control. The database is a fresh SQLite file unless --db.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("FACEGENDER_DATA", REPO.parent / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="Only the first N webfaces.")
    parser.add_argument("--new", type=int, default=10, help="Photos added before the rerun.")
    parser.add_argument("--db", default=None, help="Database URL [default: a fresh SQLite file].")
    args = parser.parse_args()

    from worker.batch import BatchReport
    from worker.config import Settings
    from worker.db import open_database
    from worker.embedded import run_folder
    from worker.pipeline import Models

    settings = Settings()
    models = Models.from_settings(settings)
    models.load()
    with tempfile.TemporaryDirectory(prefix="facegender-reuse-") as tmp:
        folder = Path(tmp) / "library"
        folder.mkdir()
        for path in sorted((DATA / "webfaces").glob("*.jpg"))[: args.limit]:
            shutil.copy(path, folder / path.name)
        sessions = open_database(args.db or f"sqlite:///{Path(tmp) / 'bench.db'}")

        def timed(reuse: bool = True) -> tuple[float, BatchReport]:
            started = time.perf_counter()
            _, totals = run_folder(sessions, folder, models, settings.batch_size, reuse=reuse)
            return time.perf_counter() - started, totals

        first, first_totals = timed()
        chips = sorted((DATA / "utkface").glob("*.jpg"))[::997][: args.new]
        for path in chips:
            shutil.copy(path, folder / path.name)
        second, second_totals = timed()
        control, control_totals = timed(reuse=False)
    images = len(list((DATA / "webfaces").glob("*.jpg"))[: args.limit])
    print(f"first run:  {images} images, {first:.2f}s ({first_totals.done} done)")
    print(
        f"second run: {images} + {len(chips)} new images, {second:.2f}s "
        f"({second_totals.reused} reused, {second_totals.done - second_totals.reused} processed)"
    )
    print(f"control:    same folder, reuse off, {control:.2f}s ({control_totals.reused} reused)")
    print(f"ratio first / second: {first / second:.1f}x (target >= 20x)")


if __name__ == "__main__":
    main()
