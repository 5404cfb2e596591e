"""The database side of processing a batch: claim pending images, store their results.

Claims and stores are what make redelivery safe. A claim is one conditional
UPDATE that takes the pending images nobody else holds (never claimed, lease
expired, or held by an earlier execution of the same owner) and stamps them
with this execution's token; a store writes only the images whose claim is
still this token's, under row locks taken in id order, and a finished image
is never written again.

An owner is a Celery task id (distributed) or the job's embedded run. Its
token adds a nonce per execution, so a retry can tell the claims that
infrastructure faults interrupted (re-taken free of charge: `refunded`) from
one whose worker died on it (re-taken at once, and charged an attempt).
"""

import secrets
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, case, false, func, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from classifier import Prediction
from classifier.runtime.unsure import UnsureRule, eye_distance
from detector.faces import LANDMARK_NAMES
from worker.batch import BatchReport, WorkItem
from worker.config import Settings
from worker.db import DONE, ERROR, PENDING, Image, utcnow
from worker.db import Face as FaceRow
from worker.jobs import job_unsure_rule
from worker.scan import os_path

# A lease outlasts the task time limit (after which a chunk's process is killed) by
# this much, for clocks of worker machines that disagree a little.
LEASE_MARGIN = timedelta(seconds=60)


@dataclass(frozen=True)
class Claimant:
    """Who claims images (owner), for how long, and which claims of its own are refunded.

    Each execution claims under its own token, owner/nonce. `refunded` holds
    the nonces of earlier executions of the same owner that infrastructure
    faults stopped: their claims are re-taken without counting an attempt.
    """

    owner: str
    lease: timedelta
    max_attempts: int
    refunded: tuple[str, ...] = ()
    nonce: str = field(default_factory=lambda: secrets.token_hex(4))

    def __post_init__(self) -> None:
        if len(self.token) > 64:
            raise ValueError(f"claim owner too long: {self.owner!r}")

    @property
    def token(self) -> str:
        return f"{self.owner}/{self.nonce}"

    @classmethod
    def from_settings(
        cls, owner: str, settings: Settings, refunded: Sequence[str] = ()
    ) -> "Claimant":
        """A lease of the task time limit plus LEASE_MARGIN: a live chunk never loses its images."""
        lease = timedelta(seconds=settings.task_time_limit) + LEASE_MARGIN
        return cls(owner, lease, settings.max_attempts, tuple(refunded))

    @classmethod
    def embedded(cls, job_id: int, max_attempts: int) -> "Claimant":
        """The owner of a job's embedded run: a later run of the job re-takes its images at once."""
        return cls.from_settings(f"run-{job_id}", replace(Settings(), max_attempts=max_attempts))


def _claimable(claimant: Claimant, now: datetime) -> ColumnElement[bool]:
    """Pending and free for `claimant`: unclaimed, lease expired, or held by its own owner."""
    return and_(
        Image.status == PENDING,
        or_(
            Image.claimed_by.is_(None),
            Image.claimed_at < now - claimant.lease,
            Image.claimed_by.startswith(f"{claimant.owner}/", autoescape=True),
        ),
    )


def _refunded(claimant: Claimant) -> ColumnElement[bool]:
    """The rows of claims that infrastructure faults interrupted (never charged twice)."""
    if not claimant.refunded:
        return false()
    return Image.claimed_by.in_([f"{claimant.owner}/{nonce}" for nonce in claimant.refunded])


def _locked_ids(image_ids: Sequence[int], condition: ColumnElement[bool]):
    """The ids matching `condition`, locked in id order (PostgreSQL): no two claims deadlock."""
    return (
        select(Image.id)
        .where(Image.id.in_(image_ids), condition)
        .order_by(Image.id)
        .with_for_update()
        .correlate(None)
        .scalar_subquery()
    )


def claim(
    sessions: sessionmaker[Session],
    image_ids: Sequence[int],
    claimant: Claimant,
    report: BatchReport,
) -> list[WorkItem]:
    """Take the claimable images among `image_ids`; give up on those out of attempts.

    Each taken image counts an attempt, except those of the refunded claim.
    Images held by another owner's live lease, or finished, are skipped.
    """
    now = utcnow()
    free = _claimable(claimant, now)
    with sessions.begin() as session:
        exhausted = and_(free, Image.attempts >= claimant.max_attempts, ~_refunded(claimant))
        gave_up = session.execute(
            update(Image)
            .where(Image.id.in_(_locked_ids(image_ids, exhausted)), exhausted)
            .values(
                status=ERROR,
                error_code="gave_up",
                error=(
                    f"gave up after {claimant.max_attempts} attempts: processing this image "
                    "crashed, ran out of memory or timed out its worker every time"
                ),
                processed_at=now,
            )
            .returning(Image.id)
            .execution_options(synchronize_session=False)
        ).all()
        taken = session.execute(
            update(Image)
            .where(Image.id.in_(_locked_ids(image_ids, free)), free)
            .values(
                claimed_by=claimant.token,
                claimed_at=now,
                attempts=Image.attempts + case((_refunded(claimant), 0), else_=1),
            )
            .returning(Image.id, Image.job_id, Image.path, Image.path_raw)
            .execution_options(synchronize_session=False)
        ).all()
    report.errors += len(gave_up)
    report.skipped += len(image_ids) - len(taken) - len(gave_up)
    work = [
        WorkItem(image_id=i, job_id=job, path=os_path(path, raw)) for i, job, path, raw in taken
    ]
    return sorted(work, key=lambda item: item.image_id)


def release(
    sessions: sessionmaker[Session], image_ids: Sequence[int], claimant: Claimant, refund: bool
) -> int:
    """Give back this execution's claim on `image_ids` (taking back its attempt if `refund`).

    For images that should be tried again at once, by anyone: after an
    out-of-memory (refunded for a batch, charged for an image alone) or an
    interrupted run.
    """
    mine = and_(Image.claimed_by == claimant.token, Image.status == PENDING)
    with sessions.begin() as session:
        result = session.execute(
            update(Image)
            .where(Image.id.in_(_locked_ids(image_ids, mine)), mine)
            .values(
                claimed_by=None,
                claimed_at=None,
                attempts=(Image.attempts - 1) if refund else Image.attempts,
            )
            .returning(Image.id)
            .execution_options(synchronize_session=False)
        )
        return len(result.all())


def retried_before(
    sessions: sessionmaker[Session], image_ids: Sequence[int], claimant: Claimant
) -> bool:
    """Would `claimant` re-take an image already tried (and not refunded)? Then go one by one.

    True after a worker died on the chunk, or a lease of a dead worker
    expired: one image of it may be the one that kills workers.
    """
    condition = and_(
        Image.id.in_(image_ids),
        _claimable(claimant, utcnow()),
        Image.attempts > 0,
        or_(Image.claimed_by.is_(None), ~_refunded(claimant)),
    )
    with sessions() as session:
        return bool(session.scalar(select(func.count()).where(condition)))


def store(
    sessions: sessionmaker[Session],
    work: list[WorkItem],
    owners: list[tuple[int, int]],
    predictions: list[Prediction],
    model_version: str,
    claimant: Claimant,
    report: BatchReport,
    *,
    unsure: UnsureRule,
) -> None:
    """One transaction: faces and final status of every image still claimed by this token.

    Faces are flagged by the thresholds recorded on their job; a job without
    them gets `unsure` (this process's rule) recorded first.
    """
    by_work: dict[int, list[tuple[int, Prediction]]] = defaultdict(list)
    for (index, face_index), prediction in zip(owners, predictions, strict=True):
        by_work[index].append((face_index, prediction))
    with sessions.begin() as session:
        ids = [w.image_id for w in work]
        rows = {
            row.id: row
            for row in session.scalars(
                select(Image)
                .where(
                    Image.id.in_(ids),
                    Image.status == PENDING,
                    Image.claimed_by == claimant.token,
                )
                .order_by(Image.id)
                .with_for_update()
            )
        }
        rules: dict[int, UnsureRule] = {}  # per job, looked up at its first face
        face_rows = []
        now = utcnow()
        for index, item in enumerate(work):
            row = rows.get(item.image_id)
            if row is None:  # finished or taken over meanwhile by another delivery
                report.skipped += 1
                continue
            row.processed_at = now
            if item.decoded:
                row.sha256, row.width, row.height = item.sha256, item.width, item.height
            if item.error_code:
                row.status, row.error_code, row.error = ERROR, item.error_code, item.error
                report.errors += 1
                continue
            row.status, row.face_count = DONE, len(item.faces)
            report.done += 1
            for face_index, prediction in by_work[index]:
                if item.job_id not in rules:
                    rules[item.job_id] = job_unsure_rule(session, item.job_id, unsure)
                face_rows.append(
                    face_row(item, face_index, prediction, model_version, rules[item.job_id])
                )
        if face_rows:
            session.execute(insert(FaceRow), face_rows)
        report.faces += len(face_rows)


def face_row(
    item: WorkItem, face_index: int, prediction: Prediction, model_version: str, rule: UnsureRule
) -> dict[str, object]:
    """The faces row of one classified face; `unsure` by `rule`, eyes in original pixels."""
    face = item.faces[face_index]
    x, y, w, h = face.box
    row: dict[str, object] = {
        "job_id": item.job_id,
        "image_id": item.image_id,
        "face_index": face_index,
        "x": x,
        "y": y,
        "w": w,
        "h": h,
        "det_confidence": face.score,
        "gender": prediction.gender,
        "confidence": prediction.confidence,
        "p_female": prediction.p_female,
        "unsure": rule.is_unsure(prediction.confidence, eye_distance(face.landmarks)),
        "model_version": model_version,
    }
    for name, (px, py) in zip(LANDMARK_NAMES, face.landmarks.tolist(), strict=True):
        row[f"{name}_x"], row[f"{name}_y"] = px, py
    return row
