"""The `facegender` command line: run, results, status, annotate, db; enqueue, worker, resume."""

import gc
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from worker import training_commands
from worker.config import ConfigError, Settings


def _setting(name: str) -> Callable[[], Any]:
    """A lazy option default from the environment: a bad value is reported, not a traceback."""
    return lambda: getattr(Settings(), name)


db_option = click.option(
    "--db",
    "db_url",
    default=_setting("db_url"),
    show_default="$FACEGENDER_DB_URL or sqlite:///facegender.db",
    help="Database URL (SQLAlchemy).",
)
model_option = click.option(
    "--model",
    "model_path",
    default=_setting("model_path"),
    type=click.Path(dir_okay=False),
    help="A .keras model with its .json beside it [default: $FACEGENDER_MODEL, else bundled].",
)
broker_option = click.option(
    "--broker",
    "broker_url",
    default=_setting("broker_url"),
    show_default="$FACEGENDER_BROKER_URL or redis://127.0.0.1:6379/0",
    help="Celery broker URL (Redis).",
)
chunk_size_option = click.option(
    "--chunk-size",
    type=click.IntRange(1),
    default=_setting("chunk_size"),
    show_default="$FACEGENDER_CHUNK_SIZE or 64",
    help="Images per task message.",
)
queue_option = click.option(
    "--queue",
    default=_setting("queue"),
    show_default="$FACEGENDER_QUEUE or facegender",
    help="Broker queue the chunks go to.",
)
no_reuse_option = click.option(
    "--no-reuse",
    is_flag=True,
    help="Detect and classify every image, even one whose content already has rows "
    "from the same model and detector settings (which are copied otherwise).",
)
unsure_below_option = click.option(
    "--unsure-below",
    type=click.FloatRange(0, 1),
    default=_setting("unsure_below"),
    show_default="$FACEGENDER_UNSURE_BELOW or the model's",
    help="Flag faces answered with a confidence under this as unsure (recorded on the job).",
)
min_eye_distance_option = click.option(
    "--min-eye-distance",
    type=click.FloatRange(0),
    default=_setting("min_eye_distance"),
    show_default="$FACEGENDER_MIN_EYE_DISTANCE or the model's",
    help="Flag faces whose eyes are fewer pixels apart as unsure (recorded on the job).",
)
stderr = Console(stderr=True)


class Interrupted(click.ClickException):
    """Ctrl-C: a message saying how to go on, and the shell's exit status for SIGINT."""

    exit_code = 130


class _Main(click.Group):
    """The command group; user errors from any command become one line on stderr."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            message = _user_error(exc)
            if message is None:
                raise
            raise click.ClickException(message) from exc


def _user_error(exc: Exception) -> str | None:
    """The message for an error the user fixes (setting, database URL, reachability)."""
    from sqlalchemy import exc as db_errors

    from worker.db import DatabaseError

    if isinstance(exc, ConfigError | DatabaseError):
        return str(exc)
    if isinstance(exc, db_errors.ArgumentError):
        return f"not a usable database URL: {exc}"
    if isinstance(exc, db_errors.OperationalError | db_errors.InterfaceError):
        reason = str(exc.orig or exc).strip().splitlines()[0]
        return f"cannot use the database: {reason}"
    return None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--verbose", is_flag=True, help="Let native libraries (TensorFlow, LiteRT) log to stderr."
)
def main(verbose: bool) -> None:
    """Find faces in folders of photos, classify gender, store one row per face."""
    from worker.runtime import native_logs

    native_logs(verbose)


def entry() -> None:
    """The `facegender` command: `main`, then the process ends.

    Before it ends, every object is frozen out of the garbage collector: the
    interpreter's last collections walk the objects of every library loaded
    (SQLAlchemy, numpy, ...) and cost 0.3-0.5 s of each command, for memory
    that the operating system takes back anyway.
    """
    try:
        main()
    finally:
        gc.freeze()


@contextmanager
def _collecting_later() -> Iterator[None]:
    """No garbage collection while the libraries and models load; their objects are frozen
    out of later collections after.

    Loading allocates some 150,000 objects that live as long as the process;
    collecting while they pile up costs 0.1-0.3 s of start-up, and walking
    them in every later full collection costs again.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def _open(db_url: str):
    """The database for a command that writes: created or migrated to the newest schema."""
    from worker.db import open_database

    return open_database(db_url)


def _read(db_url: str):
    """The database for a command that only reads: never created, never migrated."""
    from worker.db import open_for_reading

    return open_for_reading(db_url)


def _models(model_path: str | None, batch_size: int | None = None):
    from classifier import ModelNotFoundError
    from worker.pipeline import Models
    from worker.runtime import configure_opencv, configure_tensorflow

    settings = Settings()
    overrides: dict[str, Any] = {"model_path": model_path or settings.model_path}
    if batch_size:
        overrides["batch_size"] = batch_size
    settings = Settings(**{**settings.__dict__, **overrides})
    configure_tensorflow(settings.tf_threads)  # only sets what TensorFlow reads if it loads
    configure_opencv(settings)
    try:
        models = Models.from_settings(settings)
    except ModelNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    return models, settings


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@db_option
@model_option
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Images per batch.")
@no_reuse_option
@unsure_below_option
@min_eye_distance_option
def run(
    folder: Path,
    db_url: str,
    model_path: str | None,
    batch_size: int | None,
    no_reuse: bool,
    unsure_below: float | None,
    min_eye_distance: float | None,
) -> None:
    """Process FOLDER in this process and store the results (no servers needed).

    If this database holds an unfinished job for FOLDER (stopped by Ctrl-C or
    a crash), it is continued: only images not yet finished are processed, and
    files added since are included. Ctrl-C stops after the batch in flight.
    A continued job keeps the unsure thresholds it was started with.
    """
    with _collecting_later():
        from worker.embedded import open_job, run_job
        from worker.jobs import finished_count, is_cancelled
        from worker.results import job_statuses

        models, settings = _models(model_path, batch_size)
    models.unsure = models.unsure.overridden(unsure_below, min_eye_distance)
    sessions = _open(db_url)
    job_id, continued = open_job(sessions, folder)
    finished, registered = finished_count(sessions, job_id)
    if continued:
        stderr.print(
            f"continuing job {job_id} for {folder}: {finished} of {registered} images were "
            "finished before; scanning again for files added since"
        )
    started = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("images", total=registered or None, completed=finished)
        models.load()
        with _stop_on_sigint() as stop:
            try:
                totals, done = run_job(
                    sessions,
                    job_id,
                    folder,
                    models,
                    settings.batch_size,
                    settings.max_attempts,
                    on_batch=lambda _report, count: progress.advance(task, count),
                    on_registered=lambda count: progress.update(task, total=count),
                    stop=stop,
                    reuse=not no_reuse,
                )
            except KeyboardInterrupt:  # a second Ctrl-C: the transaction in flight rolled back
                done = False
        finished, registered = finished_count(sessions, job_id)
        progress.update(task, total=registered, completed=finished)
    elapsed = time.perf_counter() - started
    if not done:
        again = f"run `facegender run {shlex.quote(str(folder))}` again to continue it"
        if stop.is_set():
            raise Interrupted(
                f"interrupted: job {job_id} stopped with {finished} of {registered} images "
                f"finished; {again}"
            )
        if is_cancelled(sessions, job_id):
            raise click.ClickException(
                f"job {job_id} was cancelled with {finished} of {registered} images finished"
            )
        raise click.ClickException(
            f"job {job_id} is not finished ({finished} of {registered}); {again}"
        )
    (job,) = job_statuses(sessions, job_id)
    processed = totals.done + totals.errors
    click.echo(
        f"job {job_id}: {job.done} done, {job.error} errors, {job.faces} faces; this run "
        f"{processed} images in {elapsed:.1f}s ({processed / max(elapsed, 1e-9):.1f} images/s) "
        f"model {models.classifier.version}"
    )
    if not registered:  # most likely the wrong folder: say what was looked for
        from worker.scan import IMAGE_SUFFIXES

        looked_for = " ".join(sorted(IMAGE_SUFFIXES))
        click.echo(f"no image files under {folder} (names ending {looked_for})", err=True)


@contextmanager
def _stop_on_sigint() -> Iterator[threading.Event]:
    """Ctrl-C sets the event (stop after the batch in flight); a second one stops at once."""
    stop = threading.Event()

    def handler(_signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        os.write(2, b"\nstopping after the batch in flight (Ctrl-C again to stop at once)\n")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


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
@click.argument("job_id", type=int)
@db_option
@model_option
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option(
    "--distributed", is_flag=True, help="Queue the work in chunks for `facegender worker`s."
)
@broker_option
@chunk_size_option
@queue_option
def reclassify(
    job_id: int,
    db_url: str,
    model_path: str | None,
    batch_size: int,
    distributed: bool,
    broker_url: str,
    chunk_size: int,
    queue: str,
) -> None:
    """Classify JOB_ID's faces again with a model, from their stored landmarks (no detector).

    The new rows go next to the old ones under the new model version;
    `results` shows each image's newest. Run it again after an interruption:
    images with rows of the model are skipped. A file whose content changed
    since detection becomes an error row (code `changed`).
    """
    from classifier import GenderClassifier, ModelNotFoundError
    from worker.reclassify import reclassify_job, todo_ids

    settings = Settings()
    model = model_path or settings.model_path
    sessions = _open(db_url)
    try:
        classifier = GenderClassifier(
            model, batch_size=settings.classify_batch_size, backend=settings.backend
        )
        version = classifier.version
    except ModelNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    from worker.results import job_statuses

    if not job_statuses(sessions, job_id):
        raise click.ClickException(f"no job {job_id}")
    ids = todo_ids(sessions, job_id, version)
    if distributed:
        from worker.distributed import chunked
        from worker.reclassify_task import reclassify_sender

        _celery(broker_url, queue)
        with reclassify_sender(queue, str(Path(model).absolute()) if model else None) as send:
            for chunk in chunked(ids, chunk_size):
                send(job_id, chunk)
        click.echo(f"job {job_id}: {len(ids)} images queued for reclassify by model {version}")
        return
    started = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("images", total=len(ids))
        report = reclassify_job(
            sessions,
            job_id,
            classifier,
            batch_size,
            on_batch=lambda r: progress.advance(task, r.images + r.errors + r.skipped),
        )
    click.echo(
        f"job {job_id}: {report.images} images, {report.faces} faces reclassified by model "
        f"{version}, {report.errors} errors (changed or unreadable) in "
        f"{time.perf_counter() - started:.1f}s"
    )


@main.command()
@click.option("--job", "job_id", type=int, default=None, help="Only this job.")
@click.option("--gender", type=click.Choice(["male", "female"]), default=None)
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=None)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "jsonl"]),
    default="table",
    help="json: {jobs: [what produced the rows], rows: [...]}; jsonl: one row per line.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--include-empty",
    is_flag=True,
    help="Also one row per image with no face (none found, an error, or still pending); "
    "--gender, --min-confidence and --unsure select faces only.",
)
@click.option(
    "--model-version",
    default=None,
    help="Rows of this model version (see `reclassify`) [default: each image's newest].",
)
@click.option(
    "--unsure",
    type=click.Choice(["all", "only", "exclude"]),
    default="all",
    show_default=True,
    help="Faces flagged unsure (low confidence, or too small to judge): only them, or none.",
)
@db_option
def results(
    job_id: int | None,
    gender: str | None,
    min_confidence: float | None,
    fmt: str,
    out: Path | None,
    include_empty: bool,
    model_version: str | None,
    unsure: str,
    db_url: str,
) -> None:
    """One row per face: path, face_index, box, det_confidence, gender, confidence, model.

    Rows are streamed from the database to the output, in constant memory.
    """
    from worker.output import write_rows
    from worker.results import iter_results, job_statuses, provenance_json

    sessions = _read(db_url)
    jobs = job_statuses(sessions, job_id)
    if job_id is not None and not jobs:
        raise click.ClickException(f"no job {job_id}")
    rows = iter_results(
        sessions,
        job_id,
        gender,
        min_confidence,
        include_empty,
        model_version=model_version,
        unsure=unsure,
    )
    provenance = [provenance_json(s) for s in reversed(jobs)]
    if out is None:
        write_rows(rows, fmt, sys.stdout, provenance)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as file:
        count = write_rows(rows, fmt, file, provenance)
    stderr.print(f"wrote {count} rows to {out}")


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

    sessions = _read(db_url)
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
            + ("" if s.scan_done else ", still scanning")
            + (f"; model {s.model_version} ({s.backend})" if s.model_version else "")
        )


def _pace(rate) -> str:
    from worker.progress import format_eta

    if rate.per_second is None:
        return ""
    text = f", {rate.per_second:.3g} images/s"
    return text if not rate.eta_seconds else f"{text}, ETA {format_eta(rate.eta_seconds)}"


def _watch(sessions, job_id: int, interval: float) -> None:
    """A progress bar on stderr, refreshed from the database until the scan and the work end."""
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
            progress.update(task, total=s.total, completed=s.total - s.pending, detail=detail)
            if s.pending == 0 and s.scan_done:
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
    if job_id is not None:
        _annotate_job(job_id, out, db_url, draw_faces, save_rgb)
    elif image is not None:
        from detector import ImageLoadError, align_face, load_image

        models, _ = _models(model_path)
        try:
            pixels = load_image(image).pixels
        except ImageLoadError as exc:
            raise click.ClickException(f"{image}: {exc}") from exc
        found = models.detector.detect(pixels)
        crops = [align_face(pixels, f.landmarks) for f in found]
        predictions = models.classifier.predict(_stack(crops))
        faces = [
            {"x": f.box[0], "y": f.box[1], "w": f.box[2], "h": f.box[3], **p.__dict__}
            for f, p in zip(found, predictions, strict=True)
        ]
        target = out / f"{image.name}.annotated.jpg"
        save_rgb(draw_faces(pixels, faces), target)
        click.echo(f"{target}: {len(faces)} faces")


def _stack(crops):
    import numpy as np

    return np.stack(crops) if crops else np.zeros((0, 224, 224, 3), np.uint8)


def _annotate_job(job_id: int, out: Path, db_url: str, draw_faces, save_rgb) -> None:
    """Annotated copies of a job's images with faces, their folders kept below `out`."""
    from detector import ImageLoadError, load_image
    from worker.annotate import annotated_path, job_faces
    from worker.results import job_statuses

    sessions = _read(db_url)
    jobs = job_statuses(sessions, job_id)
    if not jobs:
        raise click.ClickException(f"no job {job_id}")
    written = 0
    for image_path, stored_path, faces in job_faces(sessions, job_id):
        try:
            pixels = load_image(image_path).pixels
        except ImageLoadError as exc:
            stderr.print(f"skipped {stored_path}: {exc}")
            continue
        save_rgb(draw_faces(pixels, faces), annotated_path(out, jobs[0].root, stored_path))
        written += 1
    click.echo(f"wrote {written} annotated images to {out}")


@main.command()
@db_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any free."
)
@click.option(
    "--threads", type=click.IntRange(1), default=4, show_default=True, help="Requests at once."
)
def serve(db_url: str, host: str, port: int, threads: int) -> None:
    """Browse results in a web browser: jobs, a face gallery, images, exports (read-only)."""
    from waitress import create_server

    from worker.web import create_app

    server = create_server(create_app(_read(db_url)), host=host, port=port, threads=threads)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"serving http://{shown}:{server.effective_port}/ (Ctrl-C to stop)")
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


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
    db_url: str, broker_url: str, queue: str, reuse: bool = True
) -> Iterator[tuple[Any, Callable[[int, list[int]], None]]]:
    """(DB sessions, chunk sender on `queue`) for enqueue and resume; a failed send is a message."""
    from worker.distributed import EnqueueError
    from worker.tasks import chunk_sender

    sessions = _open(db_url)
    _celery(broker_url, queue)
    try:
        with chunk_sender(queue, reuse) as send:
            yield sessions, send
    except EnqueueError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@db_option
@broker_option
@chunk_size_option
@queue_option
@no_reuse_option
@unsure_below_option
@min_eye_distance_option
def enqueue(
    folder: Path,
    db_url: str,
    broker_url: str,
    chunk_size: int,
    queue: str,
    no_reuse: bool,
    unsure_below: float | None,
    min_eye_distance: float | None,
) -> None:
    """Create a job for FOLDER and queue its images in chunks; prints the job id."""
    from worker.distributed import enqueue_folder

    with _sending(db_url, broker_url, queue, not no_reuse) as (sessions, send):
        job_id, count = enqueue_folder(
            sessions, folder, chunk_size, send, (unsure_below, min_eye_distance)
        )
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
@click.option(
    "--errors",
    is_flag=True,
    help="Also retry error rows whose cause may have passed (gave_up, detection_failed, "
    "unreadable); never broken files.",
)
def resume(
    job_id: int, db_url: str, broker_url: str, chunk_size: int, queue: str, errors: bool
) -> None:
    """Queue again every image of JOB_ID that is still pending (after a lost broker or crash)."""
    from worker.distributed import resume_job
    from worker.jobs import JobStateError

    try:
        with _sending(db_url, broker_url, queue) as (sessions, send):
            count, reset = resume_job(sessions, job_id, chunk_size, send, errors)
    except (LookupError, JobStateError) as exc:  # no such job, or cancelled
        raise click.ClickException(str(exc)) from exc
    if errors:
        stderr.print(f"job {job_id}: {reset} error rows with a transient cause made pending")
    click.echo(f"job {job_id}: {count} pending images queued again on {queue!r}")


@main.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@db_option
def jobs(fmt: str, db_url: str) -> None:
    """Every job, newest first: root, status, images done/error/pending, faces, created."""
    import json

    from worker.results import job_statuses, status_json

    statuses = job_statuses(_read(db_url))
    if fmt == "json":
        click.echo(json.dumps([status_json(s) for s in statuses], indent=2))
        return
    click.echo(
        f"{'job':>5}  {'status':<9}  {'done':>7}  {'error':>6}  {'pending':>7}  "
        f"{'faces':>7}  {'created':<16}  root"
    )
    for s in statuses:
        click.echo(
            f"{s.job_id:>5}  {s.status:<9}  {s.done:>7}  {s.error:>6}  {s.pending:>7}  "
            f"{s.faces:>7}  {s.created_at:%Y-%m-%d %H:%M}  {s.root}"
        )


@main.command()
@click.argument("job_id", type=int)
@db_option
def cancel(job_id: int, db_url: str) -> None:
    """Stop JOB_ID: workers skip its queued chunks, a `run` of it stops after its batch."""
    from worker.jobs import JobStateError, cancel_job

    try:
        pending = cancel_job(_open(db_url), job_id)
    except (LookupError, JobStateError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"job {job_id} cancelled; {pending} pending images will not be processed")


@main.command()
@click.argument("job_id", type=int)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@db_option
def delete(job_id: int, yes: bool, db_url: str) -> None:
    """Delete JOB_ID with all its image and face rows (one transaction; files are untouched)."""
    from worker.jobs import JobStateError, delete_job
    from worker.results import job_statuses

    sessions = _open(db_url)
    found = job_statuses(sessions, job_id)
    if not found:
        raise click.ClickException(f"no job {job_id}")
    (job,) = found
    if not yes:
        click.confirm(
            f"delete job {job_id} ({job.root}): {job.total} images, {job.faces} faces?", abort=True
        )
    try:
        images, faces = delete_job(sessions, job_id)
    except (LookupError, JobStateError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"job {job_id} deleted: {images} image rows, {faces} face rows")


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
    "--queues",
    default=_setting("queue"),
    show_default="$FACEGENDER_QUEUE or facegender",
    help="Comma-separated queues to take.",
)
@click.option("--hostname", default=None, help="Celery node name [default: facegender-PID@%h].")
@click.option(
    "--tf-threads",
    type=click.IntRange(0),
    default=lambda: Settings().tf_threads or None,
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
