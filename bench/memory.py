"""Peak memory of `facegender run` as the number of images grows.

    python bench/memory.py [--sizes 1000,2500,5000] [--case utkface]

For each size, a folder of symlinks to that many images of
$FACEGENDER_DATA/<case> (the same evenly spaced sample, each a prefix of the
next) is processed by `facegender run` in a child process on a fresh SQLite
database. The child's peak RSS comes from wait4() (the kernel's own
high-water mark); its RSS is also sampled every 0.2 s, so the table shows the
peak over the first and over the second half of the run: a leak shows as
growth between halves and between sizes.
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


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def measure(folder: Path, db: Path) -> dict[str, float]:
    samples: list[tuple[float, float]] = []
    started = time.perf_counter()
    process = subprocess.Popen(
        [FACEGENDER, "run", str(folder), "--db", f"sqlite:///{db}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )

    def sample() -> None:
        while process.poll() is None:
            value = rss_mib(process.pid)
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
    first = [rss for t, rss in samples if t < half] or [0.0]
    second = [rss for t, rss in samples if t >= half] or [0.0]
    return {
        "peak": usage.ru_maxrss / 1024,
        "first_half": max(first),
        "second_half": max(second),
        "seconds": elapsed,
        "summary": output.strip().splitlines()[-1] if output.strip() else "",  # type: ignore[dict-item]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,2500,5000")
    parser.add_argument("--case", default="utkface")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    files = sorted((DATA / args.case).glob("*.jpg"))
    files = files[:: max(1, len(files) // max(sizes))][: max(sizes)]
    env = {k: v for k, v in os.environ.items() if k.startswith("FACEGENDER_")}
    print(f"facegender run on {args.case}; settings from the environment: {env or 'defaults'}")
    print(
        f"{'images':>7}{'peak RSS MiB':>14}{'1st half':>10}{'2nd half':>10}{'seconds':>9}  summary"
    )
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="facegender-memory-") as tmp:
            folder = Path(tmp) / "images"
            folder.mkdir()
            for path in files[:size]:
                (folder / path.name).symlink_to(path.resolve())
            r = measure(folder, Path(tmp) / "run.db")
        print(
            f"{size:>7}{r['peak']:>14.0f}{r['first_half']:>10.0f}{r['second_half']:>10.0f}"
            f"{r['seconds']:>9.1f}  {r['summary']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
