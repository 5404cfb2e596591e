"""Reclassify against run on the crowd photos, in one process, start-up excluded.

    python bench/reclassify.py [--limit N] [--model PATH] [--db URL]

`run_folder` processes the 200 crowd photos (or the first --limit), models
loaded first; then `reclassify_job` classifies the job's faces again with a
second model, loaded first too: --model, or by default the bundled model
copied to a temporary folder with another calibration temperature (another
model version, the same network, so the classifier's cost is the same).
Prints both wall times and their ratio (the issue asks >= 3x).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("FACEGENDER_DATA", REPO.parent / "shared" / "data"))


def recalibrated(model: Path, folder: Path) -> Path:
    """A copy of `model`'s folder with its temperature doubled: a new version, same network."""
    shutil.copytree(model.parent, folder)
    for meta in folder.glob("*.json"):
        data = json.loads(meta.read_text())
        if "temperature" in data:
            data["temperature"] *= 2
            meta.write_text(json.dumps(data))
    return folder / model.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="Only the first N photos.")
    parser.add_argument("--model", default=None, help="The second model [default: recalibrated].")
    parser.add_argument("--db", default=None, help="Database URL [default: a fresh SQLite file].")
    args = parser.parse_args()

    import numpy as np

    from classifier import GenderClassifier
    from worker.config import Settings
    from worker.db import open_database
    from worker.embedded import run_folder
    from worker.pipeline import Models
    from worker.reclassify import reclassify_job

    settings = Settings()
    models = Models.from_settings(settings)
    models.load()
    with tempfile.TemporaryDirectory(prefix="facegender-reclassify-") as tmp:
        folder = Path(tmp) / "crowds"
        folder.mkdir()
        for path in sorted((DATA / "crowds").glob("*.jpg"))[: args.limit]:
            shutil.copy(path, folder / path.name)
        model = args.model or recalibrated(models.classifier.model_path, Path(tmp) / "model")
        second = GenderClassifier(
            model, batch_size=settings.classify_batch_size, backend=settings.backend
        )
        second.predict(np.zeros((1, 224, 224, 3), np.uint8))  # loaded and warm: start-up
        sessions = open_database(args.db or f"sqlite:///{Path(tmp) / 'bench.db'}")

        started = time.perf_counter()
        job_id, totals = run_folder(sessions, folder, models, settings.batch_size, reuse=False)
        run = time.perf_counter() - started
        started = time.perf_counter()
        report = reclassify_job(sessions, job_id, second)
        again = time.perf_counter() - started
    print(f"run:        {totals.done} images, {totals.faces} faces in {run:.2f}s")
    print(
        f"reclassify: {report.images} images, {report.faces} faces in {again:.2f}s "
        f"(model {second.version}, backend {second.backend_used})"
    )
    print(f"ratio run / reclassify: {run / again:.1f}x (target >= 3x)")


if __name__ == "__main__":
    main()
