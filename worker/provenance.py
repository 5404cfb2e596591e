"""What produced a job's rows: model version, backend, detector settings, runtime, package.

A job is stamped once, by the first worker process (or embedded run) that
processes it; model version + backend + detector settings are the key that
results can be reused by. A later process with a different record keeps the
first and logs a warning: its rows were made by something else.
"""

import importlib.metadata
import json
import logging
import platform
import sys
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from worker.db import Job

log = logging.getLogger("facegender.worker")

# Modules whose version can change a row, recorded when the process has them loaded.
RUNTIME_MODULES = ("numpy", "cv2", "PIL", "onnxruntime", "ai_edge_litert", "tensorflow", "keras")


@dataclass(frozen=True)
class Provenance:
    """The job columns of migration 0002; detector_settings and runtime are JSON objects."""

    model_version: str
    backend: str
    detector_settings: dict[str, Any]
    runtime: dict[str, Any]
    package_version: str

    def columns(self) -> dict[str, str]:
        return {
            "model_version": self.model_version,
            "backend": self.backend,
            "detector_settings": json.dumps(self.detector_settings, sort_keys=True),
            "runtime": json.dumps(self.runtime, sort_keys=True),
            "package_version": self.package_version,
        }

    def what_makes_rows(self) -> dict[str, Any]:
        """Everything but the host: workers on different machines make the same rows."""
        runtime = {key: value for key, value in self.runtime.items() if key != "host"}
        return {**asdict(self), "runtime": runtime}

    @classmethod
    def of_job(cls, job: Job) -> "Provenance | None":
        if job.model_version is None:
            return None
        return cls(
            job.model_version,
            job.backend or "",
            json.loads(job.detector_settings or "{}"),
            json.loads(job.runtime or "{}"),
            job.package_version or "",
        )


def describe(models: Any) -> Provenance:
    """The record of loaded `models` (worker.pipeline.Models) in this process."""
    classifier = models.classifier.provenance()
    return Provenance(
        model_version=classifier["model_version"],
        backend=classifier["backend"],
        detector_settings=asdict(models.detector.settings),
        runtime={
            "python": platform.python_version(),
            "packages": {**_loaded_versions(), **classifier["packages"]},
            "model_file": classifier["model"],
            "served_file": classifier["served_file"],
            "host": _host(),
        },
        package_version=importlib.metadata.version("facegender"),
    )


def record(sessions: sessionmaker[Session], job_id: int, provenance: Provenance) -> Provenance:
    """Stamp the job unless it is stamped already; returns the job's record (the first one)."""
    with sessions.begin() as session:
        stamped = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.model_version.is_(None))
            .values(**provenance.columns())
            .returning(Job.id)
        ).first()
        job = session.get(Job, job_id)
        first = Provenance.of_job(job) if job is not None and not stamped else None
    if first is None:
        return provenance
    if first.what_makes_rows() != provenance.what_makes_rows():
        log.warning(
            "job %d was started with %s; this process makes rows with %s",
            job_id,
            json.dumps(first.what_makes_rows(), sort_keys=True),
            json.dumps(provenance.what_makes_rows(), sort_keys=True),
        )
    return first


def stamp(sessions: sessionmaker[Session], job_id: int, models: Any) -> Provenance:
    """`record(describe(models))`: what a worker or an embedded run calls on starting a job."""
    return record(sessions, job_id, describe(models))


def _loaded_versions() -> dict[str, str]:
    versions = {}
    for name in RUNTIME_MODULES:
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = str(getattr(module, "__version__", None) or _distribution(name))
    return versions


def _distribution(module_name: str) -> str:
    for dist in importlib.metadata.packages_distributions().get(module_name, []):
        return importlib.metadata.version(dist)
    return "unknown"


@cache
def _host() -> dict[str, Any]:
    """CPU model and NVIDIA GPUs of this machine, from Linux's /proc where it has them."""
    host: dict[str, Any] = {"platform": platform.platform(), "cpu": platform.processor()}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                host["cpu"] = line.split(":", 1)[1].strip()
                break
    gpus = sorted(
        line.split(":", 1)[1].strip()
        for info in Path("/proc/driver/nvidia/gpus").glob("*/information")
        for line in info.read_text(errors="replace").splitlines()
        if line.startswith("Model:")
    )
    if gpus:
        host["gpus"] = gpus
    return host
