"""The results database: tables, engine/session set-up and migration to head.

The schema is created by Alembic (migrations/), never by `create_all`, so
SQLite and PostgreSQL databases evolve the same way.
"""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    make_url,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

PENDING, DONE, ERROR = "pending", "done", "error"
RUNNING, CANCELLED = "running", "cancelled"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Job(Base):
    """One folder submitted for processing."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    root: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    image_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # False while the folder is still being scanned: the job cannot be done before.
    scan_done: Mapped[bool] = mapped_column(Boolean, default=True)
    # What produced the rows (see migration 0002); detector_settings and runtime are JSON.
    model_version: Mapped[str | None] = mapped_column(String(64))
    backend: Mapped[str | None] = mapped_column(String(32))
    detector_settings: Mapped[str | None] = mapped_column(Text)
    runtime: Mapped[str | None] = mapped_column(Text)
    package_version: Mapped[str | None] = mapped_column(String(32))
    # The unsure thresholds in force for this job (see migration 0003).
    unsure_below: Mapped[float | None] = mapped_column(Float)
    min_eye_distance: Mapped[float | None] = mapped_column(Float)


class Image(Base):
    """One file of a job; `status` moves pending -> done | error exactly once."""

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("job_id", "path", name="uq_images_job_path"),
        Index("ix_images_job_status", "job_id", "status"),
        Index("ix_images_sha256", "sha256"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    error_code: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    face_count: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The lease: who claimed the image for processing, and when.
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The file name's bytes when they are not UTF-8 (`path` then holds a readable form).
    path_raw: Mapped[bytes | None] = mapped_column(LargeBinary)


class Face(Base):
    """One detected face: box and landmarks in original pixels, and its classification."""

    __tablename__ = "faces"
    __table_args__ = (
        UniqueConstraint(
            "image_id", "model_version", "face_index", name="uq_faces_image_model_index"
        ),
        Index("ix_faces_job_gender", "job_id", "gender", "confidence"),
        Index("ix_faces_image", "image_id"),
        Index("ix_faces_confidence", "confidence", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    face_index: Mapped[int] = mapped_column(Integer)
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)
    w: Mapped[float] = mapped_column(Float)
    h: Mapped[float] = mapped_column(Float)
    det_confidence: Mapped[float] = mapped_column(Float)
    left_eye_x: Mapped[float] = mapped_column(Float)
    left_eye_y: Mapped[float] = mapped_column(Float)
    right_eye_x: Mapped[float] = mapped_column(Float)
    right_eye_y: Mapped[float] = mapped_column(Float)
    nose_x: Mapped[float] = mapped_column(Float)
    nose_y: Mapped[float] = mapped_column(Float)
    mouth_left_x: Mapped[float] = mapped_column(Float)
    mouth_left_y: Mapped[float] = mapped_column(Float)
    mouth_right_x: Mapped[float] = mapped_column(Float)
    mouth_right_y: Mapped[float] = mapped_column(Float)
    gender: Mapped[str] = mapped_column(String(8))
    confidence: Mapped[float] = mapped_column(Float)
    model_version: Mapped[str] = mapped_column(String(64))
    # Under the model's confidence threshold, or too small to judge (see migration 0003).
    unsure: Mapped[bool] = mapped_column(Boolean, default=False)
    p_female: Mapped[float | None] = mapped_column(Float)


# libpq settings unless the URL gives its own (`?connect_timeout=30`): a server that accepts
# but never answers (a hung host, a half-open route) fails a connection after 10 s instead
# of holding a worker forever, and keepalives notice a silent peer of an open connection.
_PG_CONNECT = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def make_engine(url: str) -> Engine:
    """An engine with SQLite made safe for a writer plus readers (WAL, foreign keys, waits),
    PostgreSQL with timeouts (`_PG_CONNECT`)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return create_engine(url, pool_pre_ping=True)
    unless_given = {k: v for k, v in _PG_CONNECT.items() if k not in parsed.query}
    return create_engine(url, pool_pre_ping=True, connect_args=unless_given)


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class DatabaseError(Exception):
    """A database facegender cannot use as asked; the message says what to do."""


def _alembic_config():
    from alembic.config import Config

    import migrations

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return config


def upgrade(engine: Engine) -> None:
    """Bring the database to the newest schema with the bundled Alembic migrations."""
    from alembic import command

    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_database(url: str) -> sessionmaker:
    """Engine + migration to head + a session factory: what the writing commands start with."""
    engine = make_engine(url)
    upgrade(engine)
    return sessionmaker(engine, expire_on_commit=False)


def open_for_reading(url: str) -> sessionmaker:
    """A session factory on an existing database at the newest schema; never writes to it.

    A missing SQLite file or an older schema is a DatabaseError saying what to
    run, instead of a silently created or migrated database.
    """
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    parsed = make_url(url)
    shown = parsed.render_as_string(hide_password=True)
    database = parsed.database or ":memory:"
    on_file = parsed.get_backend_name() == "sqlite" and database != ":memory:"
    if on_file and not Path(database).is_file():
        raise DatabaseError(f"no database at {database} (check --db, or run `facegender run`)")
    engine = make_engine(url)
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if current != head:
        engine.dispose()
        state = "has no facegender tables" if current is None else f"is at schema {current}"
        raise DatabaseError(
            f"the database {shown} {state}, this facegender needs {head}: "
            f"run `facegender db upgrade --db {shown}`"
        )
    return sessionmaker(engine, expire_on_commit=False)
