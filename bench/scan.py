"""Registering a huge folder: a generated tree of empty .jpg files scanned into a job.

Prints, for N files (default a million, 1,000 per folder): the time to list
the tree alone (the baseline: the walk with no database), the time to
register it as a job (walk + batched inserts) and their ratio, and the
traced Python memory peak after 10% and after 100% of the rows, measured in
a second registration under tracemalloc: a flat peak means constant memory.

    python bench/scan.py [--files 1000000] [--db sqlite:///...] [--tree DIR]
"""

import argparse
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.db import open_database  # noqa: E402
from worker.jobs import new_job, register  # noqa: E402
from worker.scan import scan  # noqa: E402

PER_FOLDER = 1000


def build_tree(root: Path, files: int) -> None:
    """`files` empty .jpg files, PER_FOLDER to a folder (kept if already complete)."""
    marker = root / f".complete-{files}"
    if marker.exists():
        return
    for start in range(0, files, PER_FOLDER):
        folder = root / f"{start // PER_FOLDER:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(start, min(start + PER_FOLDER, files)):
            os.close(os.open(folder / f"{i:07d}.jpg", os.O_CREAT | os.O_WRONLY, 0o644))
    marker.touch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--db", default=None, help="database URL [a fresh SQLite file]")
    parser.add_argument("--tree", type=Path, default=None, help="where the tree is built [tmp]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="facegender-scan-") as tmp:
        tree = args.tree or Path(tmp) / "tree"
        clock = time.perf_counter()
        build_tree(tree, args.files)
        print(f"tree of {args.files:,} files ready in {time.perf_counter() - clock:.1f}s")
        sessions = open_database(args.db or f"sqlite:///{tmp}/scan.db")

        clock = time.perf_counter()
        listed = sum(1 for _ in scan(tree))
        listing = time.perf_counter() - clock
        clock = time.perf_counter()
        (registered,) = deque(register(sessions, new_job(sessions, tree), tree), maxlen=1)
        registering = time.perf_counter() - clock
        assert listed == registered == args.files, (listed, registered)
        print(f"list only (baseline): {listing:.1f}s ({listed / listing:,.0f} files/s)")
        print(
            f"register as a job:    {registering:.1f}s ({registered / registering:,.0f} files/s), "
            f"{registering / listing:.1f}x the listing"
        )

        tenth, peaks = args.files // 10, {}
        tracemalloc.start()
        for count in register(sessions, new_job(sessions, tree), tree):
            if count >= tenth and "10%" not in peaks:
                peaks["10%"] = tracemalloc.get_traced_memory()[1]
        peaks["100%"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        slope = (peaks["100%"] - peaks["10%"]) / (args.files - tenth)
        print(
            f"traced peak: {peaks['10%'] / 2**20:.2f} MiB after 10%, "
            f"{peaks['100%'] / 2**20:.2f} MiB after 100% ({slope:.3f} B per file), "
            f"process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
        )


if __name__ == "__main__":
    main()
