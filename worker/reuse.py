"""Content-addressed reuse: copy the rows of an identical file instead of working on it again.

A claimed image whose file's sha256 matches a done image of any job whose
rows were made by the same model version, backend and detector settings
(the job's provenance, see worker.provenance) gets that image's face rows
(and its sha256, size and face count) copied, in one transaction per batch,
instead of being decoded, detected and classified. Hashing reads the file
once; everything else only for the images left over.

Only rows of the job's own stamped model version are reused: rows that a
`reclassify` added under another model version are not (their job's
backend and settings describe the detection, not that classifier).
"""

import hashlib
import json
import os
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

import numpy as np
from sqlalchemy import Row, and_, bindparam, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from classifier.runtime.unsure import UnsureRule, eye_distance
from detector.faces import LANDMARK_NAMES
from detector.loading import DEFAULT_MAX_BYTES
from worker.batch import BatchReport, WorkItem
from worker.db import DONE, PENDING, Face, Image, Job, utcnow
from worker.jobs import job_unsure_rule
from worker.store import Claimant

_HASH_THREADS = 4
_READ = 1 << 20
# Face columns that describe the face and its answer; the rest say where it is stored.
_COPIED = [c.name for c in Face.__table__.columns if c.name not in ("id", "job_id", "image_id")]


@dataclass(frozen=True)
class ReuseKey:
    """What must be equal for rows to be reused: model version, backend, detector settings."""

    model_version: str
    backend: str
    detector_settings: str  # as stored on the job: JSON with sorted keys

    @classmethod
    def of(cls, models: Any) -> "ReuseKey":
        """The key of loaded `models` (worker.pipeline.Models), as `provenance.describe` has it."""
        settings = json.dumps(asdict(models.detector.settings), sort_keys=True)
        return cls(models.classifier.version, models.classifier.backend_used or "", settings)


def file_sha256(path: str) -> str | None:
    """The file's sha256 as `load_image` computes it; None unless it is a readable regular file
    within the loader's size limit (the pipeline then says what is wrong with it).

    Opened without blocking and checked on the open descriptor: a pipe never blocks a batch.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    digest = hashlib.sha256()
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > DEFAULT_MAX_BYTES:
            return None
        while chunk := os.read(fd, _READ):
            digest.update(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return digest.hexdigest()


@cache
def _hashing() -> ThreadPoolExecutor:
    """The hashing threads, started once per process (`cache` is cleared in a forked child)."""
    return ThreadPoolExecutor(_HASH_THREADS, "facegender-hash")


os.register_at_fork(after_in_child=_hashing.cache_clear)


def reuse(
    sessions: sessionmaker[Session],
    work: list[WorkItem],
    key: ReuseKey,
    claimant: Claimant,
    report: BatchReport,
    unsure: UnsureRule,
) -> list[WorkItem]:
    """Store the reusable items of `work` (copied rows); returns the items still to process.

    Copied faces are flagged unsure by their new job's thresholds (`unsure`
    where the job has none yet), as `store` flags the faces it classifies.
    """
    if not work:
        return work
    hashes = list(_hashing().map(file_sha256, [item.path for item in work]))
    known = {h for h in hashes if h is not None}
    if not known:
        return work
    with sessions.begin() as session:
        sources = _sources(session, sorted(known), key)
        if not sources:
            return work
        copied = [(item, sources[h]) for item, h in zip(work, hashes, strict=True) if h in sources]
        mine = set(
            session.scalars(
                select(Image.id)
                .where(
                    Image.id.in_([item.image_id for item, _ in copied]),
                    Image.status == PENDING,
                    Image.claimed_by == claimant.token,
                )
                .order_by(Image.id)
                .with_for_update()
            )
        )
        mine_copied = [(item, source) for item, source in copied if item.image_id in mine]
        _copy(session, mine_copied, unsure)
    report.done += len(mine)
    report.reused += len(mine)
    report.faces += sum(source.face_count for item, source in copied if item.image_id in mine)
    taken = {item.image_id for item, _ in copied}
    report.skipped += len(taken - mine)
    return [item for item in work if item.image_id not in taken]


@dataclass(frozen=True)
class _Source:
    """A done image whose rows can be copied: its facts and its face rows (column -> value)."""

    sha256: str
    width: int | None
    height: int | None
    face_count: int
    faces: list[dict[str, Any]]


def _sources(session: Session, hashes: Sequence[str], key: ReuseKey) -> dict[str, _Source]:
    """sha256 -> the newest done image with that content and complete rows made under `key`."""
    images = session.execute(
        select(Image.id, Image.sha256, Image.width, Image.height, Image.face_count)
        .join(Job, Job.id == Image.job_id)
        .where(
            Image.sha256.in_(hashes),
            Image.status == DONE,
            Job.model_version == key.model_version,
            Job.backend == key.backend,
            Job.detector_settings == key.detector_settings,
        )
        .order_by(Image.id.desc())
    ).all()
    newest: dict[str, Row] = {}
    for row in images:
        newest.setdefault(row.sha256, row)
    ids = [row.id for row in newest.values()]
    faces: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    if ids:
        columns = [Face.image_id, *(getattr(Face, name) for name in _COPIED)]
        for row in session.execute(
            select(*columns)
            .where(and_(Face.image_id.in_(ids), Face.model_version == key.model_version))
            .order_by(Face.image_id, Face.face_index)
        ):
            faces[row[0]].append(dict(zip(_COPIED, row[1:], strict=True)))
    return {
        sha: _Source(sha, row.width, row.height, row.face_count or 0, faces[row.id])
        for sha, row in newest.items()
        if len(faces[row.id]) == (row.face_count or 0)  # complete: never a partial copy
    }


def _copy(session: Session, copies: list[tuple[WorkItem, _Source]], unsure: UnsureRule) -> None:
    """Mark the items done with their source's facts and insert copies of its face rows."""
    now = utcnow()
    rules = {job: job_unsure_rule(session, job, unsure) for job in {i.job_id for i, _ in copies}}
    images, face_rows = [], []
    for item, source in copies:
        images.append(
            {
                "image": item.image_id,
                "face_count": source.face_count,
                "sha256": source.sha256,
                "width": source.width,
                "height": source.height,
            }
        )
        for face in source.faces:
            eyes = np.asarray([[face[f"{n}_{axis}"] for axis in "xy"] for n in LANDMARK_NAMES])
            flagged = rules[item.job_id].is_unsure(float(face["confidence"]), eye_distance(eyes))
            face_rows.append(
                {**face, "job_id": item.job_id, "image_id": item.image_id, "unsure": flagged}
            )
    if images:  # one executemany: no ORM objects for what is a plain copy
        done = {"status": DONE, "processed_at": now}
        columns = ("face_count", "sha256", "width", "height")
        statement = (
            update(Image)
            .where(Image.id == bindparam("image"))
            .values(**done, **{c: bindparam(c) for c in columns})
        )
        session.connection().execute(statement, images)
    if face_rows:
        session.execute(insert(Face), face_rows)
