"""`results` streams: the memory it takes does not grow with the number of rows."""

import io
import tracemalloc

from sqlalchemy import insert

from worker.db import DONE, Face, Image, Job, open_database
from worker.output import write_rows
from worker.results import iter_results

ROWS = 100_000


class _Sink(io.TextIOBase):
    """A file that counts what it is given and keeps nothing."""

    written = 0

    def write(self, text: str) -> int:
        self.written += len(text)
        return len(text)


def _fill(sessions, rows: int) -> None:
    """One job, `rows` images with one face each, inserted in batches."""
    with sessions.begin() as session:
        session.add(Job(id=1, root="/photos", status=DONE, image_count=rows))
    for start in range(0, rows, 10_000):
        ids = range(start + 1, min(start + 10_001, rows + 1))
        with sessions.begin() as session:
            session.execute(
                insert(Image),
                [{"id": i, "job_id": 1, "path": f"/photos/{i:07d}.jpg", "status": DONE,
                  "face_count": 1, "attempts": 1} for i in ids],
            )  # fmt: skip
            session.execute(
                insert(Face),
                [{"job_id": 1, "image_id": i, "face_index": 0, "x": 1.0, "y": 2.0, "w": 30.0,
                  "h": 40.0, "det_confidence": 0.99, **dict.fromkeys(_LANDMARKS, 5.0),
                  "gender": "female" if i % 2 else "male", "confidence": 0.9,
                  "model_version": "m"} for i in ids],
            )  # fmt: skip


_LANDMARKS = [
    f"{name}_{axis}"
    for name in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
    for axis in "xy"
]


def _rss_mib() -> int:
    """Resident memory now: what the database driver buffers outside Python shows here."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS"))


def test_results_stream_in_constant_memory(db_url):
    """Python's traced peak and the resident size stay flat while 100k rows go out.

    On PostgreSQL a client-side cursor would hold every row in libpq (about
    100 MB here, seen by the resident size only); rows come from a server-side
    cursor a page at a time instead.
    """
    sessions = open_database(db_url)
    _fill(sessions, ROWS)
    peaks: dict[int, int] = {}
    resident = [_rss_mib()]

    def watched():
        for count, row in enumerate(iter_results(sessions, job_id=1, include_empty=True), 1):
            if count in (20_000, ROWS):
                peaks[count] = tracemalloc.get_traced_memory()[1]
                resident.append(_rss_mib())
            yield row

    sink = _Sink()
    tracemalloc.start()
    try:
        written = write_rows(watched(), "csv", sink, [])
    finally:
        tracemalloc.stop()
    assert written == ROWS and sink.written > ROWS * 50
    slope = (peaks[ROWS] - peaks[20_000]) / (ROWS - 20_000)
    print(
        f"traced peak {peaks[20_000]:,} B at 20k rows, {peaks[ROWS]:,} B at 100k: {slope:.2f} B/row"
    )
    assert slope < 2.0  # a list of the rows would cost ~1 kB per row
    assert max(resident) - resident[0] < 30, resident  # MiB
