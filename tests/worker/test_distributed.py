"""Distributed mode end to end: real Redis, real PostgreSQL, real `facegender worker` processes.

Every test starts its own workers (one pool process and one TensorFlow
thread each) against a throwaway PostgreSQL database and the tests' private
Redis database, and checks the rows that the job leaves behind.
"""

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from worker.db import DONE, ERROR, PENDING, Face, Image, Job, make_engine, open_database

pytestmark = pytest.mark.services

FACEGENDER = str(Path(sys.executable).with_name("facegender"))
JOB_IMAGES = 300
CHUNK = 16
FACE_FLOATS = (
    "x", "y", "w", "h", "det_confidence", "left_eye_x", "left_eye_y", "right_eye_x",
    "right_eye_y", "nose_x", "nose_y", "mouth_left_x", "mouth_left_y", "mouth_right_x",
    "mouth_right_y", "confidence",
)  # fmt: skip


class WorkerProcess:
    """One `facegender worker` in its own process group, logging to a file."""

    def __init__(self, name: str, env: dict[str, str], db_url: str, broker_url: str, logs: Path):
        self.name = name
        self.log = logs / f"{name}.log"
        command = [FACEGENDER, "worker", "--db", db_url, "--broker", broker_url]
        command += ["--concurrency", "1", "--tf-threads", "1", "--hostname", f"{name}@%h"]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, loaded: int = 1, timeout: float = 180) -> None:
        """Until `loaded` pool processes (in this worker's life) have loaded their models."""
        wait_for(
            lambda: self.text().count("facegender: models loaded") >= loaded,
            timeout,
            f"{self.name} to load its models",
            self,
        )

    def child(self) -> int:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        pids = [int(p) for p in children.split()]
        assert len(pids) == 1, f"{self.name} has pool processes {pids}"
        return pids[0]

    def kill_child(self) -> None:
        kill_busy_child(self)

    def kill_all(self) -> None:
        """The whole worker at once (parent and pool), like a machine that loses power."""
        first_busy(self)
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def first_busy(*workers: WorkerProcess, timeout: float = 60) -> tuple[WorkerProcess, int]:
    """The first of `workers` whose pool process burns CPU (is inside a chunk), and its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = {worker: worker.child() for worker in workers}
        before = {worker: _cpu_ticks(pid) for worker, pid in pids.items()}
        time.sleep(0.1)
        for worker, pid in pids.items():
            if _cpu_ticks(pid) - before[worker] >= 3:
                return worker, pid
    logs = "\n".join(f"--- {w.name}\n{w.text()[-3000:]}" for w in workers)
    raise AssertionError(f"no pool process got busy in {timeout}s\n{logs}")


def kill_busy_child(*workers: WorkerProcess) -> WorkerProcess:
    """SIGKILL the pool process of whichever of `workers` is first inside a chunk."""
    worker, pid = first_busy(*workers)
    os.kill(pid, signal.SIGKILL)
    return worker


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def wait_for(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    *workers: WorkerProcess,
    poll: float = 0.2,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        for worker in workers:
            assert worker.proc.poll() is None, f"{worker.name} exited\n{worker.text()[-3000:]}"
        time.sleep(poll)
    logs = "\n".join(f"--- {w.name}\n{w.text()[-3000:]}" for w in workers)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")


@pytest.fixture
def cluster(tmp_path: Path, model_path: Path, postgres_url: str, redis_url: str):
    """Starts workers on demand with the given settings; stops all of them afterwards."""
    started: list[WorkerProcess] = []
    open_database(postgres_url)  # workers never migrate; `facegender db upgrade` does

    def start(name: str, db_url: str | None = None, **settings: str) -> WorkerProcess:
        env = {**os.environ, "FACEGENDER_MODEL": str(model_path), "FACEGENDER_BATCH_SIZE": "16"}
        env.update({f"FACEGENDER_{key.upper()}": str(value) for key, value in settings.items()})
        worker = WorkerProcess(name, env, db_url or postgres_url, redis_url, tmp_path)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    done = subprocess.run(
        [FACEGENDER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def enqueue(folder: Path, db_url: str, broker_url: str, chunk: int = CHUNK) -> int:
    out = cli(
        "enqueue", str(folder), "--db", db_url, "--broker", broker_url, "--chunk-size", str(chunk)
    )
    assert out.count("\n") == 1, out  # the job id is the only line on stdout
    return int(out)


def counts(db_url: str, job_id: int) -> dict[str, int]:
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(Image.status, func.count())
                .where(Image.job_id == job_id)
                .group_by(Image.status)
            )
            return {DONE: 0, ERROR: 0, PENDING: 0, **dict(rows.all())}
    finally:
        engine.dispose()


def wait_job_done(db_url: str, job_id: int, timeout: float, *workers: WorkerProcess) -> None:
    sessions = open_database(db_url)

    def job_done() -> bool:
        with sessions() as session:
            return session.get(Job, job_id).status == DONE

    wait_for(job_done, timeout, f"job {job_id} to be done", *workers, poll=0.5)


def snapshot(db_url: str, job_id: int) -> dict[str, dict]:
    """Per file name: status, face_count, attempts, error_code and its faces in order."""
    sessions = open_database(db_url)
    with sessions() as session:
        images = session.scalars(select(Image).where(Image.job_id == job_id)).all()
        faces = session.scalars(
            select(Face).where(Face.job_id == job_id).order_by(Face.image_id, Face.face_index)
        ).all()
    by_id = {
        image.id: {
            "status": image.status,
            "face_count": image.face_count,
            "attempts": image.attempts,
            "error_code": image.error_code,
            "faces": [],
        }
        for image in images
    }
    for face in faces:
        by_id[face.image_id]["faces"].append(face)
    return {Path(image.path).name: by_id[image.id] for image in images}


def assert_exactly_once(db_url: str, job_id: int, expected_images: int) -> dict[str, dict]:
    """Every image finished once: one row each, none pending, face rows = face_count, no dupes."""
    rows = snapshot(db_url, job_id)
    assert len(rows) == expected_images
    assert not [name for name, row in rows.items() if row["status"] == PENDING]
    for name, row in rows.items():
        if row["status"] == DONE:
            indexes = [face.face_index for face in row["faces"]]
            assert indexes == list(range(row["face_count"])), name  # none missing, none twice
        else:
            assert row["faces"] == [], name
    return rows


@pytest.fixture(scope="module")
def job_folder(tmp_path_factory: pytest.TempPathFactory, utkface_files: list[Path]) -> Path:
    """300 UTKFace images spread over the whole (age-sorted) set."""
    folder = tmp_path_factory.mktemp("job")
    step = len(utkface_files) // JOB_IMAGES
    for path in utkface_files[::step][:JOB_IMAGES]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def reference(job_folder: Path, model_path: Path, tmp_path_factory) -> dict[str, dict]:
    """The embedded `facegender run` of the same folder, batches equal to the chunks."""
    db_url = f"sqlite:///{tmp_path_factory.mktemp('reference') / 'run.db'}"
    env = {"FACEGENDER_MODEL": str(model_path), "FACEGENDER_TF_THREADS": "1"}
    out = cli(
        "run", str(job_folder), "--db", db_url, "--batch-size", str(CHUNK), env=env, timeout=600
    )
    job_id = int(out.split()[1].rstrip(":"))
    return snapshot(db_url, job_id)


def assert_same_faces(rows: dict[str, dict], reference: dict[str, dict]) -> None:
    assert rows.keys() == reference.keys()
    for name, row in rows.items():
        ref = reference[name]
        assert (row["status"], row["face_count"]) == (ref["status"], ref["face_count"]), name
        for face, ref_face in zip(row["faces"], ref["faces"], strict=True):
            assert (face.face_index, face.gender, face.model_version) == (
                ref_face.face_index,
                ref_face.gender,
                ref_face.model_version,
            ), name
            got = [getattr(face, c) for c in FACE_FLOATS]
            want = [getattr(ref_face, c) for c in FACE_FLOATS]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4, err_msg=name)


def test_enqueue_puts_json_chunks_on_the_queue(tmp_path, utkface_files, postgres_url, redis_url):
    import json
    from base64 import b64decode

    import redis

    folder = tmp_path / "few"
    folder.mkdir()
    for path in utkface_files[:40]:
        shutil.copy(path, folder / path.name)
    open_database(postgres_url)
    job_id = enqueue(folder, postgres_url, redis_url)
    messages = [json.loads(m) for m in redis.Redis.from_url(redis_url).lrange("facegender", 0, -1)]
    assert len(messages) == 3  # 16 + 16 + 8, nobody consuming
    ids = []
    for message in messages:
        assert message["content-type"] == "application/json"
        assert message["headers"]["task"] == "facegender.process_chunk"
        args, kwargs, _ = json.loads(b64decode(message["body"]))
        assert args == [] and kwargs.keys() == {"job_id", "image_ids"}
        assert kwargs["job_id"] == job_id
        ids += kwargs["image_ids"]
    assert len(set(ids)) == 40

    status = json.loads(cli("status", str(job_id), "--format", "json", "--db", postgres_url))
    assert (status["status"], status["pending"], status["done"]) == ("running", 40, 0)
    assert status["rate_per_s"] is None and status["eta_s"] is None


def test_two_workers_write_the_same_rows_as_the_embedded_run(
    cluster, job_folder, reference, postgres_url, redis_url
):
    workers = [cluster("w1"), cluster("w2")]
    for worker in workers:
        worker.wait_ready()
    # Only the pool processes load a model runtime; the parent that forks them never does.
    runtimes = ("onnxruntime", "ai_edge_litert", "tensorflow")
    for worker in workers:
        parent = Path(f"/proc/{worker.proc.pid}/maps").read_text()
        child = Path(f"/proc/{worker.child()}/maps").read_text()
        assert not [name for name in runtimes if name in parent]
        assert [name for name in runtimes if name in child]

    started = time.monotonic()
    job_id = enqueue(job_folder, postgres_url, redis_url)
    watch = subprocess.Popen(
        [FACEGENDER, "status", str(job_id), "--watch", "--interval", "0.5", "--db", postgres_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_job_done(postgres_url, job_id, 300, *workers)
    elapsed = time.monotonic() - started
    watched, bar = watch.communicate(timeout=60)  # --watch returns once nothing is pending
    assert f"{JOB_IMAGES}/{JOB_IMAGES}" in bar
    assert f"{JOB_IMAGES} done, 0 errors, 0 pending" in watched

    rows = assert_exactly_once(postgres_url, job_id, JOB_IMAGES)
    assert_same_faces(rows, reference)
    assert all(row["attempts"] == 1 for row in rows.values())
    for worker in workers:  # both took part
        assert f"job {job_id}: chunk of" in worker.text(), worker.name
    status = cli("status", str(job_id), "--db", postgres_url)
    assert f"{JOB_IMAGES} done, 0 errors, 0 pending" in status
    print(f"\n2 workers: {JOB_IMAGES} images in {elapsed:.1f}s; {status.strip()}")


def test_sigkilled_workers_lose_and_duplicate_nothing(
    cluster, job_folder, reference, postgres_url, redis_url
):
    # Attempts are counted on each claim; 5 leaves room for kills that hit one image repeatedly.
    settings = {"visibility_timeout": "25", "task_time_limit": "20", "max_attempts": "5"}
    a, b = cluster("a", **settings), cluster("b", **settings)
    a.wait_ready()
    b.wait_ready()
    job_id = enqueue(job_folder, postgres_url, redis_url)

    def progressed(done: int) -> Callable[[], bool]:
        return lambda: counts(postgres_url, job_id)[DONE] >= done

    # 1. A pool process dies mid-chunk: its parent rejects the message back onto the queue.
    wait_for(progressed(30), 120, "30 images", a, b)
    a.kill_child()
    # 2. A whole worker dies mid-chunk: Redis hands its chunk out again after the visibility
    #    timeout, to whichever worker is alive; a new worker joins.
    wait_for(progressed(90), 120, "90 images", a, b)
    b.kill_all()
    c = cluster("c", **settings)
    # 3. A pool process dies mid-chunk once more: A's respawned one or C's, whichever is in
    #    a chunk first (where a chunk takes a fraction of a second, C may take all that is left).
    a.wait_ready(loaded=2)
    c.wait_ready()
    assert counts(postgres_url, job_id)[PENDING] > 0, "the job finished before the third kill"
    kill_busy_child(a, c)

    wait_job_done(postgres_url, job_id, 300, a, c)
    rows = assert_exactly_once(postgres_url, job_id, JOB_IMAGES)
    assert all(row["status"] == DONE for row in rows.values())
    assert max(row["attempts"] for row in rows.values()) >= 2  # kills did hit chunks in flight
    # Both pool kills seen (a chunk that overran the hard time limit on a loaded machine is
    # SIGKILLed by its parent too; those are logged as such and not counted here).
    log = a.text() + c.text()
    assert log.count("exited with 'signal 9 (SIGKILL)'") - log.count("Hard time limit") == 2
    # Chunks that came back were processed image by image, in other batches than the
    # reference: MTCNN may then place a box a few pixels differently, but finds the same faces.
    same = sum(row["face_count"] == reference[name]["face_count"] for name, row in rows.items())
    assert same >= 0.99 * JOB_IMAGES


def test_resume_after_the_broker_lost_every_message(
    cluster, job_folder, reference, postgres_url, redis_url
):
    import redis

    workers = [cluster("w1"), cluster("w2")]
    for worker in workers:
        worker.wait_ready()
    job_id = enqueue(job_folder, postgres_url, redis_url)
    wait_for(lambda: counts(postgres_url, job_id)[DONE] >= 60, 120, "60 images", *workers)
    redis.Redis.from_url(redis_url).flushdb()

    # The chunks in flight finish, then nothing moves: the queue is gone.
    last: list[int] = [-1]

    def stalled() -> bool:
        now = counts(postgres_url, job_id)[DONE]
        still, last[0] = now == last[0], now
        return still

    wait_for(stalled, 60, "the job to stall", *workers, poll=4)
    left = counts(postgres_url, job_id)[PENDING]
    assert 0 < left < JOB_IMAGES - 60

    out = cli("resume", str(job_id), "--db", postgres_url, "--broker", redis_url)
    assert f"{left} pending images queued again" in out
    wait_job_done(postgres_url, job_id, 300, *workers)
    rows = assert_exactly_once(postgres_url, job_id, JOB_IMAGES)
    assert all(row["status"] == DONE for row in rows.values())
    same = sum(row["face_count"] == reference[name]["face_count"] for name, row in rows.items())
    assert same >= 0.99 * JOB_IMAGES
    # Idempotent: nothing is left to send, and the rows do not change.
    assert "0 pending images" in cli(
        "resume", str(job_id), "--db", postgres_url, "--broker", redis_url
    )
    assert snapshot(postgres_url, job_id).keys() == rows.keys()
    assert counts(postgres_url, job_id) == {DONE: JOB_IMAGES, ERROR: 0, PENDING: 0}


def face_mosaic(files: list[Path], target: Path, tile: int = 32, side: int = 1024) -> None:
    """A contact sheet of (side / tile)^2 faces: detecting and classifying them all takes long."""
    sheet = PILImage.new("RGB", (side, side))
    per_row = side // tile
    for index in range(per_row * per_row):
        with PILImage.open(files[index * 7 % len(files)]) as face:
            sheet.paste(
                face.resize((tile, tile)), ((index % per_row) * tile, (index // per_row) * tile)
            )
    sheet.save(target, quality=95)


def test_an_image_that_always_overruns_the_time_limit_becomes_an_error_row(
    cluster, utkface_files, tmp_path, postgres_url, redis_url
):
    folder = tmp_path / "poison"
    folder.mkdir()
    good = utkface_files[5::900][:23]
    for path in good:
        shutil.copy(path, folder / path.name)
    # Sorts among the good files, so that it shares its first chunk with some of them.
    # 4,096 faces, detected at full size: about 4x the 1,024-face sheet at 1,024 px, which
    # the ONNX Runtime detector and the int8 classifier finish in under 8 s.
    poison = folder / "3_poison_contact_sheet.jpg"
    face_mosaic(utkface_files, poison, side=2048)

    worker = cluster(
        "p", task_time_limit="8", visibility_timeout="12", max_attempts="2", max_side="2048"
    )
    worker.wait_ready()
    job_id = enqueue(folder, postgres_url, redis_url, chunk=8)
    wait_job_done(postgres_url, job_id, 300, worker)

    rows = assert_exactly_once(postgres_url, job_id, len(good) + 1)
    bad = rows.pop(poison.name)
    assert (bad["status"], bad["error_code"], bad["attempts"]) == (ERROR, "gave_up", 2)
    assert all(row["status"] == DONE for row in rows.values())  # its chunk-mates too
    assert worker.text().count("Hard time limit (8s) exceeded") == 2


SMALL_IMAGES, SMALL_CHUNK = 96, 8


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory: pytest.TempPathFactory, utkface_files: list[Path]) -> Path:
    """96 UTKFace images from across the set: twelve chunks, a minute on two shared cores."""
    folder = tmp_path_factory.mktemp("small")
    step = len(utkface_files) // SMALL_IMAGES
    for path in utkface_files[step // 2 :: step][:SMALL_IMAGES]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def small_reference(small_folder: Path, model_path: Path, tmp_path_factory) -> dict[str, dict]:
    """The embedded run of `small_folder` into its own SQLite database, batches = chunks."""
    db_url = f"sqlite:///{tmp_path_factory.mktemp('small_reference') / 'run.db'}"
    env = {"FACEGENDER_MODEL": str(model_path), "FACEGENDER_TF_THREADS": "1"}
    out = cli(
        "run", str(small_folder), "--db", db_url, "--batch-size", str(SMALL_CHUNK), env=env,
        timeout=600,
    )  # fmt: skip
    return snapshot(db_url, int(out.split()[1].rstrip(":")))


def assert_healthy_run(db_url: str, job_id: int, reference: dict[str, dict]) -> None:
    """Every image done once, with one attempt (nothing charged twice), rows as embedded."""
    rows = assert_exactly_once(db_url, job_id, SMALL_IMAGES)
    assert {name: row["status"] for name, row in rows.items()} == {
        name: ref["status"] for name, ref in reference.items()
    }
    assert not [name for name, row in rows.items() if row["error_code"] == "gave_up"]
    assert {name: row["attempts"] for name, row in rows.items() if row["attempts"] != 1} == {}
    assert_same_faces(rows, reference)


def test_resume_while_chunks_are_queued_and_running_changes_nothing(
    cluster, small_folder, small_reference, postgres_url, redis_url
):
    """Three `resume` calls mid-job; their duplicates meet running, queued and done chunks.

    Duplicates go to a queue of their own, served by a third worker, so that they
    are certainly processed while the originals are still queued or running.
    """
    from sqlalchemy import text

    def resume(queue: str) -> int:
        out = cli(
            "resume", str(job_id), "--db", postgres_url, "--broker", redis_url,
            "--chunk-size", str(SMALL_CHUNK), "--queue", queue,
        )  # fmt: skip
        return int(out.split(": ")[1].split()[0])

    def claimed() -> int:
        with engine.connect() as connection:
            query = "SELECT count(*) FROM images WHERE claimed_by IS NOT NULL"
            return connection.execute(text(query)).scalar_one()

    job_id = enqueue(small_folder, postgres_url, redis_url, chunk=SMALL_CHUNK)
    engine = make_engine(postgres_url)
    # Faces cannot be written while this is held: a worker claims a chunk and waits in its
    # store, so its chunk stays running (claimed, live lease) until the lock goes.
    hold = engine.connect()
    hold.execute(text("LOCK TABLE faces IN SHARE MODE"))
    try:
        workers = [cluster("r1"), cluster("r2"), cluster("dup", queue="duplicates")]
        wait_for(lambda: claimed() >= 2 * SMALL_CHUNK, 180, "two running chunks", *workers)
        # 1. Duplicates of every chunk: the first two are running on r1/r2 (skipped by the
        #    third worker without an attempt); it takes the third, whose original is queued.
        resumed = [resume("duplicates")]
        # (A duplicate that stole a running chunk instead would wait in its store too.)
        wait_for(lambda: claimed() >= 3 * SMALL_CHUNK, 60, "a duplicate to run", *workers)
        resumed.append(resume("facegender"))  # 2. behind the originals on the main queue
    finally:
        hold.rollback()
        hold.close()
    resumed.append(resume("duplicates"))  # 3. while the workers catch up
    assert resumed[:2] == [SMALL_IMAGES, SMALL_IMAGES], resumed
    wait_job_done(postgres_url, job_id, 300, *workers)
    engine.dispose()
    assert_healthy_run(postgres_url, job_id, small_reference)
    skipped = f"{SMALL_CHUNK} images: 0 done (0 reused), 0 errors, 0 faces, {SMALL_CHUNK} skipped"
    assert workers[2].text().count(skipped) >= 2  # the duplicates of the running chunks
    assert "Traceback" not in "".join(worker.text() for worker in workers)
    print(f"\nresume sent {resumed} pending images again; rows as the embedded run")


class FlakyProxy:
    """A loopback TCP proxy to PostgreSQL that can drop every connection and refuse new ones.

    The workers reach the database only through it, so an outage is theirs alone:
    the machine's shared cluster (and the test's own checks) stay up.
    """

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.down_until = 0.0
        self.links: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:  # closed
                return
            if time.monotonic() < self.down_until:
                self.refused += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()  # a reset, as from a server that is not there
                continue
            upstream = socket.create_connection(self.upstream)
            with self.lock:
                self.links |= {client, upstream}
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
            with self.lock:
                self.links -= {source, target}

    def outage(self, seconds: float) -> None:
        """Drop every open connection now and refuse new ones for `seconds`."""
        self.down_until = time.monotonic() + seconds
        with self.lock:
            links = list(self.links)
        for link in links:
            with contextlib.suppress(OSError):
                link.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()
        self.outage(0)


def test_a_database_outage_mid_job_is_retried_and_charges_no_image(
    cluster, small_folder, small_reference, postgres_url, redis_url
):
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    proxy = FlakyProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        workers = [cluster("o1", db_url=proxied), cluster("o2", db_url=proxied)]
        for worker in workers:
            worker.wait_ready()
        job_id = enqueue(small_folder, postgres_url, redis_url, chunk=SMALL_CHUNK)
        wait_for(lambda: counts(postgres_url, job_id)[DONE] >= 12, 180, "12 images", *workers)
        proxy.outage(20)
        time.sleep(20)
        assert counts(postgres_url, job_id)[PENDING] > 0, "the job finished during the outage"
        assert proxy.refused > 0  # the workers did try to reach the database meanwhile
        wait_job_done(postgres_url, job_id, 300, *workers)
    finally:
        proxy.close()
    assert_healthy_run(postgres_url, job_id, small_reference)
    logs = "".join(worker.text() for worker in workers)
    assert "infrastructure, not charged" in logs
