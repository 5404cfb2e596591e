"""The `facegender` command line: run, results, status, annotate, db; enqueue, worker, resume."""

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from worker import training_commands
from worker.config import Settings

_settings = Settings()
db_option = click.option(
    "--db",
    "db_url",
    default=_settings.db_url,
    show_default="$FACEGENDER_DB_URL or sqlite:///facegender.db",
    help="Database URL (SQLAlchemy).",
)
model_option = click.option(
    "--model",
    "model_path",
    default=_settings.model_path,
    type=click.Path(dir_okay=False),
    help="A .keras model with its .json beside it [default: $FACEGENDER_MODEL, else bundled].",
)
broker_option = click.option(
    "--broker",
    "broker_url",
    default=_settings.broker_url,
    show_default="$FACEGENDER_BROKER_URL or redis://127.0.0.1:6379/0",
    help="Celery broker URL (Redis).",
)
chunk_size_option = click.option(
    "--chunk-size",
    type=click.IntRange(1),
    default=_settings.chunk_size,
    show_default="$FACEGENDER_CHUNK_SIZE or 64",
    help="Images per task message.",
)
queue_option = click.option(
    "--queue",
    default=_settings.queue,
    show_default="$FACEGENDER_QUEUE or facegender",
    help="Broker queue the chunks go to.",
)
stderr = Console(stderr=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Find faces in folders of photos, classify gender, store one row per face."""


def _open(db_url: str):
    from worker.db import open_database

    return open_database(db_url)


def _models(model_path: str | None, batch_size: int | None = None):
    from classifier import ModelNotFoundError
    from worker.pipeline import Models
    from worker.runtime import configure_tensorflow

    settings = Settings()
    overrides = {"model_path": model_path or settings.model_path}
    if batch_size:
        overrides["batch_size"] = batch_size
    settings = Settings(**{**settings.__dict__, **overrides})
    try:
        models = Models.from_settings(settings)
    except ModelNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    configure_tensorflow(settings.tf_threads)
    return models, settings


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@db_option
@model_option
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Images per batch.")
def run(folder: Path, db_url: str, model_path: str | None, batch_size: int | None) -> None:
    """Process FOLDER in this process and store the results (no servers needed)."""
    from worker.embedded import run_folder
    from worker.jobs import scan_folder

    models, settings = _models(model_path, batch_size)
    sessions = _open(db_url)
    total = len(scan_folder(folder))
    started = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("images", total=total)
        models.load()
        job_id, totals = run_folder(
            sessions,
            folder,
            models,
            settings.batch_size,
            settings.max_attempts,
            on_batch=lambda _report, count: progress.advance(task, count),
        )
    elapsed = time.perf_counter() - started
    click.echo(
        f"job {job_id}: {totals.done} done, {totals.errors} errors, {totals.faces} faces "
        f"in {elapsed:.1f}s ({(totals.done + totals.errors) / max(elapsed, 1e-9):.1f} images/s) "
        f"model {models.classifier.version}"
    )


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=False,
    )


@main.command()
@click.option("--job", "job_id", type=int, default=None, help="Only this job.")
@click.option("--gender", type=click.Choice(["male", "female"]), default=None)
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=None)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--include-empty", is_flag=True, help="Also list images with no face or an error.")
@db_option
def results(
    job_id: int | None,
    gender: str | None,
    min_confidence: float | None,
    fmt: str,
    out: Path | None,
    include_empty: bool,
    db_url: str,
) -> None:
    """One row per face: path, face_index, box, det_confidence, gender, confidence, model."""
    from worker.results import RESULT_COLUMNS, face_results, to_csv, to_json

    rows = face_results(_open(db_url), job_id, gender, min_confidence, include_empty)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        text = to_csv(rows)
    elif fmt == "json":
        text = to_json(rows) + "\n"
    else:
        table = Table(*RESULT_COLUMNS)
        for row in rows:
            table.add_row(*(_cell(row[c]) for c in RESULT_COLUMNS))
        console = Console(file=out.open("w") if out else sys.stdout, width=200)
        console.print(table)
        return
    if out:
        out.write_text(text)
    else:
        click.echo(text, nl=False)


def _cell(value: object) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


@main.command()
@click.argument("job_id", type=int, required=False)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.option("--watch", is_flag=True, help="Show a progress bar until no image is pending.")
@click.option(
    "--interval", type=click.FloatRange(0.1), default=2.0, show_default=True, help="Seconds."
)
@db_option
def status(job_id: int | None, fmt: str, watch: bool, interval: float, db_url: str) -> None:
    """Progress of JOB_ID (or every job): done, error, pending, faces, rate and ETA."""
    import json

    from worker.progress import job_rate
    from worker.results import job_statuses, status_json

    sessions = _open(db_url)
    if watch:
        if job_id is None:
            raise click.UsageError("--watch needs a JOB_ID")
        _watch(sessions, job_id, interval)
    statuses = job_statuses(sessions, job_id)
    if job_id is not None and not statuses:
        raise click.ClickException(f"no job {job_id}")
    rates = [job_rate(sessions, s) for s in statuses]
    if fmt == "json":
        data = [
            {**status_json(s), "rate_per_s": r.per_second, "eta_s": r.eta_seconds}
            for s, r in zip(statuses, rates, strict=True)
        ]
        click.echo(json.dumps(data[0] if job_id is not None else data, indent=2))
        return
    for s, r in zip(statuses, rates, strict=True):
        click.echo(
            f"job {s.job_id} [{s.status}] {s.root}: {s.total} images, {s.done} done, "
            f"{s.error} errors, {s.pending} pending, {s.faces} faces{_pace(r)}"
        )


def _pace(rate) -> str:
    from worker.progress import format_eta

    if rate.per_second is None:
        return ""
    text = f", {rate.per_second:.3g} images/s"
    return text if not rate.eta_seconds else f"{text}, ETA {format_eta(rate.eta_seconds)}"


def _watch(sessions, job_id: int, interval: float) -> None:
    """A progress bar on stderr, refreshed from the database until nothing is pending."""
    from worker.progress import job_rate
    from worker.results import job_statuses

    statuses = job_statuses(sessions, job_id)
    if not statuses:
        raise click.ClickException(f"no job {job_id}")
    with Progress(
        TextColumn("[bold]job {task.fields[job]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        console=stderr,
    ) as progress:
        task = progress.add_task("", total=statuses[0].total, job=job_id, detail="")
        while True:
            s = job_statuses(sessions, job_id)[0]
            detail = f"{s.error} errors, {s.faces} faces{_pace(job_rate(sessions, s))}"
            progress.update(task, completed=s.total - s.pending, detail=detail)
            if s.pending == 0:
                break
            time.sleep(interval)


@main.command()
@click.argument(
    "image", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False
)
@click.option("--job", "job_id", type=int, default=None, help="Annotate every image of this job.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@db_option
@model_option
def annotate(
    image: Path | None, job_id: int | None, out: Path, db_url: str, model_path: str | None
) -> None:
    """Write copies of IMAGE (or of a job's images) with boxes, gender and confidence drawn."""
    from worker.annotate import draw_faces, save_rgb

    if (image is None) == (job_id is None):
        raise click.UsageError("give either IMAGE or --job ID")
    if image is not None:
        from detector import align_face, load_image

        models, _ = _models(model_path)
        pixels = load_image(image).pixels
        found = models.detector.detect(pixels)
        crops = [align_face(pixels, f.landmarks) for f in found]
        predictions = models.classifier.predict(_stack(crops))
        faces = [
            {"x": f.box[0], "y": f.box[1], "w": f.box[2], "h": f.box[3], **p.__dict__}
            for f, p in zip(found, predictions, strict=True)
        ]
        target = out / f"{image.stem}.annotated.jpg"
        save_rgb(draw_faces(pixels, faces), target)
        click.echo(f"{target}: {len(faces)} faces")
        return
    _annotate_job(job_id, out, db_url, draw_faces, save_rgb)


def _stack(crops):
    import numpy as np

    return np.stack(crops) if crops else np.zeros((0, 224, 224, 3), np.uint8)


def _annotate_job(job_id, out: Path, db_url: str, draw_faces, save_rgb) -> None:
    from itertools import groupby

    from detector import ImageLoadError, load_image
    from worker.results import face_results

    rows = face_results(_open(db_url), job_id=job_id)
    written = 0
    for (image_path,), faces in groupby(rows, key=lambda r: (r["path"],)):
        try:
            pixels = load_image(image_path).pixels
        except ImageLoadError as exc:
            stderr.print(f"skipped {image_path}: {exc}")
            continue
        target = out / f"{Path(image_path).stem}.annotated.jpg"
        save_rgb(draw_faces(pixels, list(faces)), target)
        written += 1
    click.echo(f"wrote {written} annotated images to {out}")


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
@db_option
def db_upgrade(db_url: str) -> None:
    """Create or migrate the database schema to the newest version."""
    _open(db_url)
    click.echo("database is at the newest schema")


def _celery(broker_url: str, queue: str | None = None):
    """The Celery app pointed at `broker_url` (the flag wins over the environment)."""
    from worker.app import configure

    settings = Settings()
    overrides = {"broker_url": broker_url, **({"queue": queue} if queue else {})}
    try:
        return configure(Settings(**{**settings.__dict__, **overrides}))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


@contextmanager
def _sending(
    db_url: str, broker_url: str, queue: str
) -> Iterator[tuple[Any, Callable[[int, list[int]], None]]]:
    """(DB sessions, chunk sender on `queue`) for enqueue and resume; a failed send is a message."""
    from worker.distributed import EnqueueError
    from worker.tasks import chunk_sender

    sessions = _open(db_url)
    _celery(broker_url, queue)
    try:
        with chunk_sender(queue) as send:
            yield sessions, send
    except EnqueueError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@db_option
@broker_option
@chunk_size_option
@queue_option
def enqueue(folder: Path, db_url: str, broker_url: str, chunk_size: int, queue: str) -> None:
    """Create a job for FOLDER and queue its images in chunks; prints the job id."""
    from worker.distributed import enqueue_folder

    with _sending(db_url, broker_url, queue) as (sessions, send):
        job_id, count = enqueue_folder(sessions, folder, chunk_size, send)
    stderr.print(
        f"job {job_id}: {count} images queued in {-(-count // chunk_size)} chunks on {queue!r}"
    )
    click.echo(job_id)


@main.command()
@click.argument("job_id", type=int)
@db_option
@broker_option
@chunk_size_option
@queue_option
def resume(job_id: int, db_url: str, broker_url: str, chunk_size: int, queue: str) -> None:
    """Queue again every image of JOB_ID that is still pending (after a lost broker or crash)."""
    from worker.distributed import resume_job

    try:
        with _sending(db_url, broker_url, queue) as (sessions, send):
            count = resume_job(sessions, job_id, chunk_size, send)
    except LookupError as exc:  # no such job
        raise click.ClickException(str(exc)) from exc
    click.echo(f"job {job_id}: {count} pending images queued again on {queue!r}")


@main.command()
@db_option
@broker_option
@model_option
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Worker processes, each with its own models (about 1 GB of memory each).",
)
@click.option(
    "--queues", default=_settings.queue, show_default=True, help="Comma-separated queues to take."
)
@click.option("--hostname", default=None, help="Celery node name [default: facegender-PID@%h].")
@click.option(
    "--tf-threads",
    type=click.IntRange(0),
    default=_settings.tf_threads or None,
    help="TensorFlow threads per process [default: $FACEGENDER_TF_THREADS, else CPUs/concurrency].",
)
@click.option("--loglevel", default="INFO", show_default=True)
def worker(
    db_url: str,
    broker_url: str,
    model_path: str | None,
    concurrency: int,
    queues: str,
    hostname: str | None,
    tf_threads: int | None,
    loglevel: str,
) -> None:
    """Start a Celery worker (events on) that processes queued chunks into the database."""
    from classifier import ModelNotFoundError, resolve_model_path

    try:
        model = resolve_model_path(model_path)
    except ModelNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    _check_schema(db_url)
    if tf_threads is None:
        tf_threads = max(1, (os.cpu_count() or 1) // concurrency)
    # The pool processes read their settings from the environment after the fork.
    os.environ.update(
        FACEGENDER_DB_URL=db_url,
        FACEGENDER_BROKER_URL=broker_url,
        FACEGENDER_MODEL=str(model),
        FACEGENDER_TF_THREADS=str(tf_threads),
    )
    app = _celery(broker_url)
    app.worker_main(
        [
            "worker",
            f"--loglevel={loglevel}",
            "--events",
            "--pool=prefork",
            f"--concurrency={concurrency}",
            f"--queues={queues}",
            f"--hostname={hostname or f'facegender-{os.getpid()}@%h'}",
            "--prefetch-multiplier=1",
            "--optimization=fair",
        ]
    )


def _check_schema(db_url: str) -> None:
    """Fail fast on an unreachable or unmigrated database (workers never migrate it)."""
    from sqlalchemy import inspect

    from worker.db import make_engine

    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            ready = inspect(connection).has_table("images")
    except Exception as exc:
        raise click.ClickException(f"cannot reach the database: {exc}") from exc
    finally:
        engine.dispose()  # no connection may be inherited by the forked pool processes
    if not ready:
        raise click.ClickException(
            "the database has no facegender tables yet: run `facegender db upgrade --db URL`"
        )


main.add_command(training_commands.train)
main.add_command(training_commands.evaluate)
