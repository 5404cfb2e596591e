"""Peak memory of `facegender run`, and of a worker process, as the number of images grows.

    python bench/memory.py [--sizes 1000,10000] [--case mixed|utkface] [--worker]

`mixed` (the default) interleaves every webfaces crop (1,366 sizes up to 256
px), the crowd photos (416 px) and UTKFace chips (200 px) in a fixed order,
so that each size's folder holds the same mix and is a prefix of the next;
`utkface` is an evenly spaced sample of chips. Folders are symlinks to
$FACEGENDER_DATA, made at run time.

For each size, `facegender run` processes the folder in a child process on a
fresh SQLite database; its peak RSS is the kernel's high-water mark (wait4),
and its RSS is also sampled every 0.2 s, so the table shows the peak over the
first and over the second half of the run: a leak shows as growth between
halves and between sizes. With --worker, the same folders are also enqueued
to one `facegender worker --concurrency 1` (PostgreSQL and Redis on this
machine, as bench/scaling.py) and the peak of its pool process (the one that
holds the models) is read from /proc before the worker stops.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("FACEGENDER_DATA", REPO.parent / "shared" / "data"))
FACEGENDER = str(Path(sys.executable).with_name("facegender"))


def chosen_files(case: str, count: int) -> list[Path]:
    """`count` files of the case, each smaller count's files a prefix of a larger one's."""
    utkface = sorted((DATA / "utkface").glob("*.jpg"))
    if case == "utkface":
        return utkface[:: max(1, len(utkface) // count)][:count]
    others = sorted((DATA / "webfaces").glob("*.jpg")) + sorted((DATA / "crowds").glob("*.jpg"))
    others = others[::7] + [p for i, p in enumerate(others) if i % 7]  # sizes spread along
    share = len(others) / (len(others) + len(utkface))
    mixed, taken = [], 0
    for index in range(count):  # the others spread evenly among the chips
        if taken < len(others) and taken < (index + 1) * share:
            mixed.append(others[taken])
            taken += 1
        else:
            mixed.append(utkface[index - taken])
    return mixed


def status_mib(pid: int, field: str = "VmRSS") -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def measure_run(folder: Path, db: Path) -> dict[str, object]:
    samples: list[tuple[float, float]] = []
    started = time.perf_counter()
    process = subprocess.Popen(
        [FACEGENDER, "run", str(folder), "--db", f"sqlite:///{db}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )

    def sample() -> None:
        while process.poll() is None:
            value = status_mib(process.pid)
            if value is not None:
                samples.append((time.perf_counter() - started, value))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    sampler.join()
    output = process.stdout.read().decode() if process.stdout else ""
    if process.returncode:
        raise RuntimeError(f"facegender run failed ({process.returncode}): {output}")
    half = elapsed / 2
    return {
        "peak": usage.ru_maxrss / 1024,
        "first_half": max([rss for t, rss in samples if t < half] or [0.0]),
        "second_half": max([rss for t, rss in samples if t >= half] or [0.0]),
        "seconds": elapsed,
        "summary": output.strip().splitlines()[-1] if output.strip() else "",
    }


def descendants(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = [int(c) for c in children]
    return found + [d for c in found for d in descendants(c)]


def measure_worker(folders: dict[int, Path]) -> dict[int, float]:
    """Peak RSS (MiB) of the worker's pool process after each folder, in order of size."""
    sys.path.insert(0, str(REPO / "bench"))
    import redis
    from scaling import BROKER, run_job, start_workers, stop, throwaway_database, wait_loaded

    from worker.db import open_database

    peaks: dict[int, float] = {}
    redis.Redis.from_url(BROKER).flushdb()
    with (
        tempfile.TemporaryDirectory(prefix="facegender-memory-logs-") as logs,
        throwaway_database() as db_url,
    ):
        open_database(db_url)
        workers = start_workers(1, db_url, Path(logs))
        try:
            wait_loaded(workers, Path(logs), 1)
            for size, folder in sorted(folders.items()):
                run_job(folder, db_url, 64)
                pool = descendants(workers[0].pid)
                peaks[size] = max((status_mib(p, "VmHWM") or 0.0) for p in pool)
        finally:
            stop(workers)
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--case", choices=("mixed", "utkface"), default="mixed")
    parser.add_argument("--worker", action="store_true", help="also measure a worker process")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    files = chosen_files(args.case, max(sizes))
    env = {k: v for k, v in os.environ.items() if k.startswith("FACEGENDER_")}
    print(f"facegender run on {args.case}; settings from the environment: {env or 'defaults'}")
    print(
        f"{'images':>7}{'peak RSS MiB':>14}{'1st half':>10}{'2nd half':>10}{'seconds':>9}  summary"
    )
    with tempfile.TemporaryDirectory(prefix="facegender-memory-") as tmp:
        folders = {}
        for size in sizes:
            folder = folders[size] = Path(tmp) / f"images{size}"
            folder.mkdir()
            for index, path in enumerate(files[:size]):
                (folder / f"{index:06}_{path.name}").symlink_to(path.resolve())
            r = measure_run(folder, Path(tmp) / f"run{size}.db")
            print(
                f"{size:>7}{r['peak']:>14.0f}{r['first_half']:>10.0f}{r['second_half']:>10.0f}"
                f"{r['seconds']:>9.1f}  {r['summary']}",
                flush=True,
            )
        if args.worker:
            # The same pool process takes every folder in turn: its peak may only grow.
            for size, peak in measure_worker(folders).items():
                print(f"worker pool process, peak RSS after the {size}-image job: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
