"""Shared fixtures: the real data set, throwaway databases, a private Redis DB, the model.

Services are real (PostgreSQL, Redis on this machine). Outside CI a test that
needs a missing service is skipped with the reason; under CI=true it fails,
because a skipped service test would hide a broken set-up.
"""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("FACEGENDER_DATA", REPO.parent / "shared" / "data"))
PG_ADMIN_URL = os.environ.get(
    "FACEGENDER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_TEST_URL = os.environ.get("FACEGENDER_TEST_REDIS", "redis://127.0.0.1:6379/11")
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI."""
    if IN_CI:
        pytest.fail(f"required under CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "utkface").is_dir():
        unavailable(f"data set not found at {DATA} (set FACEGENDER_DATA)")
    return DATA


@pytest.fixture(scope="session")
def utkface_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "utkface").glob("*.jpg"))


@pytest.fixture(scope="session")
def crowd_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "crowds").glob("*.jpg"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'results.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"facegender_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any failure means no usable server
        admin.dispose()
        unavailable(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Both supported databases: the same test runs once on each."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return request.getfixturevalue(fixture)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database number of the tests' own, emptied before and after."""
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError as exc:
        unavailable(f"Redis not reachable at {REDIS_TEST_URL}: {exc}")
    yield REDIS_TEST_URL
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The model the product ships (or $FACEGENDER_MODEL)."""
    from classifier import resolve_model_path

    return resolve_model_path()


@pytest.fixture(scope="session")
def models(model_path: Path):
    """Detector and classifier loaded once for the whole test session."""
    from worker.config import Settings
    from worker.pipeline import Models

    loaded = Models.from_settings(Settings(model_path=str(model_path)))
    loaded.load()
    return loaded


@pytest.fixture(scope="session")
def unprivileged(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A command prefix that runs a process without the power to read every file.

    As root (how CI runs), the process keeps uid 0 but loses the capabilities
    that bypass file permissions (setpriv drops them from its bounding set),
    so a mode-000 file or folder is unreadable to it as to any user, while
    the interpreter, wherever it is installed, still runs. Checked on a real
    mode-000 file before it is used.
    """
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    import subprocess
    import sys

    locked = tmp_path_factory.mktemp("probe") / "locked"
    locked.write_text("secret")
    locked.chmod(0)
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", f"open({str(locked)!r}).read()"],
        capture_output=True,
        text=True,
    )
    if "PermissionError" not in probe.stderr:
        unavailable(f"cannot drop root's file capabilities here: {probe.stderr.strip()[-200:]}")
    return prefix
