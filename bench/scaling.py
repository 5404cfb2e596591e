"""Scale-out benchmark: the same job with 1 and with 2 `facegender worker` processes.

Each worker has one pool process with one TensorFlow thread. The clock runs
from `facegender enqueue` until the job is marked done in PostgreSQL; the
workers are started and their models loaded (and warmed) before it starts,
as on a cluster that is already up. Needs the real Redis and PostgreSQL:

    .venv/bin/python bench/scaling.py [--images 1280] [--chunk-size 32] [--workers 1 2] [--repeat 2]

Each job runs --repeat times on the same warm workers and the fastest run
counts (the machine may be shared). Prints one line per worker count and the
speed-up of the largest over 1.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from worker.db import DONE, Job, open_database  # noqa: E402

FACEGENDER = str(Path(sys.executable).with_name("facegender"))
DATA = Path(os.environ.get("FACEGENDER_DATA", REPO.parent / "shared" / "data"))
PG_ADMIN_URL = os.environ.get(
    "FACEGENDER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
BROKER = os.environ.get("FACEGENDER_BENCH_REDIS", "redis://127.0.0.1:6379/13")


@contextmanager
def throwaway_database():
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"facegender_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def start_workers(count: int, db_url: str, logs: Path) -> list[subprocess.Popen]:
    workers = []
    for index in range(count):
        log = (logs / f"worker{count}-{index}.log").open("wb")
        command = [FACEGENDER, "worker", "--db", db_url, "--broker", BROKER, "--concurrency", "1"]
        command += ["--tf-threads", "1", "--hostname", f"bench{index}@%h"]
        workers.append(subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True))
    return workers


def wait_loaded(workers: list[subprocess.Popen], logs: Path, count: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        paths = [logs / f"worker{count}-{i}.log" for i in range(count)]
        if all("models loaded" in p.read_text(errors="replace") for p in paths):
            return
        if any(w.poll() is not None for w in workers):
            raise SystemExit(f"a worker exited; see {logs}")
        time.sleep(0.2)
    raise SystemExit(f"workers did not load their models in 300s; see {logs}")


def stop(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)


def run_job(folder: Path, db_url: str, chunk_size: int) -> tuple[float, float]:
    """Seconds from the start of `enqueue` to the job being done, and from its return."""
    sessions = open_database(db_url)
    started = time.perf_counter()
    out = subprocess.run(
        [FACEGENDER, "enqueue", str(folder), "--db", db_url, "--broker", BROKER]
        + ["--chunk-size", str(chunk_size)],
        capture_output=True,
        text=True,
        check=True,
    )
    job_id = int(out.stdout)
    queued = time.perf_counter()
    while True:
        with sessions() as session:
            if session.get(Job, job_id).status == DONE:
                finished = time.perf_counter()
                return finished - started, finished - queued
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1280)
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=2, help="Runs per worker count; best counts.")
    parser.add_argument("--logs", type=Path, default=None, help="Keep the worker logs here.")
    args = parser.parse_args()

    import redis

    files = sorted((DATA / "utkface").glob("*.jpg"))
    if len(files) < args.images:
        raise SystemExit(f"need {args.images} UTKFace images under {DATA} (set FACEGENDER_DATA)")
    step = len(files) // args.images
    chosen = files[::step][: args.images]
    results: dict[int, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="facegender-bench-") as tmp:
        folder, logs = Path(tmp) / "images", args.logs or Path(tmp) / "logs"
        folder.mkdir()
        logs.mkdir(parents=True, exist_ok=True)
        for path in chosen:
            (folder / path.name).symlink_to(path)
        for count in args.workers:
            redis.Redis.from_url(BROKER).flushdb()
            with throwaway_database() as db_url:
                open_database(db_url)
                workers = start_workers(count, db_url, logs)
                try:
                    wait_loaded(workers, logs, count)
                    runs = [run_job(folder, db_url, args.chunk_size) for _ in range(args.repeat)]
                finally:
                    stop(workers)
            total, processing = min(runs)
            results[count] = (total, processing)
            print(
                f"{count} worker process(es): {args.images} images in {total:.1f}s "
                f"(runs: {', '.join(f'{t:.1f}s' for t, _ in runs)}) "
                f"= {args.images / total:.1f} images/s, {processing:.1f}s after enqueue returned "
                f"(load average {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    if 1 in results and len(results) > 1:
        most = max(results)
        (one, one_p), (many, many_p) = results[1], results[most]
        print(
            f"speed-up {most} vs 1 worker process: {one / many:.2f}x "
            f"(enqueue to done), {one_p / many_p:.2f}x (after enqueue)"
        )


if __name__ == "__main__":
    main()
