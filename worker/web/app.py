"""The Flask application: routes for jobs, gallery, image view, pictures and exports.

Flask because the rest of facegender is synchronous SQLAlchemy: one thread
per request (waitress) needs no async layer, and Jinja2 templates need no
build step.
"""

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, abort, current_app, render_template, request, url_for
from sqlalchemy.orm import Session, sessionmaker

from worker.results import job_statuses, provenance_json
from worker.web import pictures, queries
from worker.web.filters import UNSURE_CHOICES, BadFilter, Filters, Key

PAGE_SIZE = 60
MAX_PAGE_SIZE = 500
CACHE_SECONDS = 3600


def create_app(sessions: sessionmaker[Session], page_size: int = PAGE_SIZE) -> Flask:
    """The browser over `sessions` (opened for reading: this app never writes)."""
    app = Flask(__name__)
    app.extensions["facegender"] = sessions
    app.config["PAGE_SIZE"] = page_size
    app.add_template_global(page_url)
    app.register_error_handler(BadFilter, lambda exc: (f"bad request: {exc}", 400))
    app.add_url_rule("/", "jobs", jobs)
    app.add_url_rule("/faces", "gallery", gallery)
    app.add_url_rule("/faces/<int:face_id>/thumb.jpg", "thumbnail", thumbnail)
    app.add_url_rule("/images/<int:image_id>", "image", image)
    app.add_url_rule("/images/<int:image_id>/image.jpg", "image_file", image_file)
    app.add_url_rule("/export.csv", "export_csv", export_csv)
    app.add_url_rule("/export.json", "export_json", export_json)
    return app


def _sessions() -> sessionmaker[Session]:
    return current_app.extensions["facegender"]


def jobs() -> str:
    return render_template("jobs.html", jobs=queries.job_progress(_sessions()))


def gallery() -> str:
    filters = Filters.from_args(request.args)
    after = Key.parse(request.args["after"]) if request.args.get("after") else None
    before = Key.parse(request.args["before"]) if request.args.get("before") else None
    size = request.args.get("limit", current_app.config["PAGE_SIZE"], type=int)
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise BadFilter(f"limit must be 1 to {MAX_PAGE_SIZE}")
    page = queries.gallery_page(_sessions(), filters, size, after, before)
    job_list, versions = queries.job_choices(_sessions())
    return render_template(
        "gallery.html",
        page=page,
        filters=filters,
        args=filters.args() | ({"limit": str(size)} if "limit" in request.args else {}),
        jobs=job_list,
        versions=versions,
        unsure_choices=UNSURE_CHOICES,
    )


def image(image_id: int) -> str:
    view = queries.image_view(_sessions(), image_id, request.args.get("model_version"))
    if view is None:
        abort(404)
    selected = request.args.get("face", type=int)
    return render_template("image.html", view=view, selected=selected)


def thumbnail(face_id: int) -> Response:
    source = queries.face_source(_sessions(), face_id)
    if source is None:
        abort(404)
    return _picture(
        lambda real, identity: pictures.thumbnail(real, identity, source.box, source.longest),
        source.path,
        source.path_raw,
        source.root,
        f"face-{face_id}",
    )


def image_file(image_id: int) -> Response:
    view = queries.image_view(_sessions(), image_id, None)
    if view is None:
        abort(404)
    return _picture(
        pictures.whole_image, view.image.path, view.image.path_raw, view.root, f"image-{image_id}"
    )


def _picture(render, path: str, path_raw: bytes | None, root: str, name: str) -> Response:
    """A cached JPEG of a file inside its job's root, with an ETag; 404 for anything else."""
    try:
        real = pictures.servable_path(path, path_raw, root)
        identity = pictures.file_identity(real)
        etag = f"{name}-{identity[0]}-{identity[1]}"
        if etag in request.if_none_match:
            response = Response(status=304)
        else:
            response = Response(render(real, identity), mimetype="image/jpeg")
    except pictures.NotServable:
        abort(404)
    response.set_etag(etag)
    response.cache_control.private = True
    response.cache_control.max_age = CACHE_SECONDS
    return response


def export_csv() -> Response:
    rows = queries.export_rows(_sessions(), Filters.from_args(request.args))
    return _download(_csv_chunks(rows), "text/csv", "faces.csv")


def export_json() -> Response:
    filters = Filters.from_args(request.args)
    provenance = [provenance_json(s) for s in job_statuses(_sessions(), filters.job)]
    rows = queries.export_rows(_sessions(), filters)
    return _download(_json_chunks(rows, filters, provenance), "application/json", "faces.json")


def _download(chunks: Iterator[str], mimetype: str, name: str) -> Response:
    response = Response(chunks, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


def _csv_chunks(rows: Iterator[dict[str, Any]], every: int = 500) -> Iterator[str]:
    """CSV text in chunks of `every` rows: streamed, never the whole file in memory."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=queries.EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for count, row in enumerate(rows, 1):
        writer.writerow(row)
        if count % every == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _json_chunks(
    rows: Iterator[dict[str, Any]], filters: Filters, provenance: list[dict[str, Any]]
) -> Iterator[str]:
    """{"filter", "jobs", "rows"}: the same shape as `results --format json`, plus the filter."""
    yield json.dumps({"filter": filters.args(), "jobs": provenance})[:-1] + ', "rows": ['
    for count, row in enumerate(rows):
        yield ("\n" if count == 0 else ",\n") + json.dumps(row)
    yield "]}\n"


def page_url(args: dict[str, Any], **extra: Any) -> str:
    """The gallery's URL with the filter kept and `extra` (a page key) added."""
    return url_for("gallery", **args, **extra)
