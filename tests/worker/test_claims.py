"""Claims, leases and stores on the real databases (SQLite and PostgreSQL), without models.

These are the rules that make duplicate deliveries and `resume` harmless: who
may take a pending image, when an attempt counts, and that only the claim's
holder writes the result.
"""

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from classifier.runtime.unsure import UnsureRule
from worker.batch import BatchReport, WorkItem
from worker.db import DONE, ERROR, PENDING, Image, Job, open_database
from worker.distributed import resume_job
from worker.jobs import create_job
from worker.store import Claimant, claim, release, retried_before, store

LEASE = timedelta(minutes=5)


@pytest.fixture
def job(tmp_path: Path, db_url: str):
    """(sessions, job id, image ids) of a job of six image-named files."""
    root = tmp_path / "photos"
    root.mkdir()
    for index in range(6):
        (root / f"{index}.jpg").write_bytes(b"never decoded here")
    sessions = open_database(db_url)
    job_id = create_job(sessions, root)
    with sessions() as session:
        ids = sorted(session.scalars(select(Image.id).where(Image.job_id == job_id)))
    return sessions, job_id, ids


def rows(sessions) -> dict[int, Image]:
    with sessions() as session:
        return {row.id: row for row in session.scalars(select(Image))}


def take(sessions, ids, claimant) -> list[int]:
    return [item.image_id for item in claim(sessions, ids, claimant, BatchReport())]


def finish(sessions, ids, claimant) -> BatchReport:
    """Store `ids` as done with no faces, as the pipeline does for face-free images."""
    report = BatchReport()
    jobs = {image_id: row.job_id for image_id, row in rows(sessions).items()}
    work = [WorkItem(image_id=i, job_id=jobs[i], path="") for i in ids]
    store(sessions, work, [], [], "test-model", claimant, report, unsure=UnsureRule())
    return report


def test_a_duplicate_delivery_neither_steals_a_live_claim_nor_counts_an_attempt(job):
    sessions, _, ids = job
    task = Claimant("task-a", LEASE, max_attempts=3)
    assert take(sessions, ids, task) == ids
    duplicate = Claimant("task-b", LEASE, max_attempts=3)  # e.g. a chunk sent by `resume`
    report = BatchReport()
    assert claim(sessions, ids, duplicate, report) == [] and report.skipped == len(ids)
    assert {row.attempts for row in rows(sessions).values()} == {1}
    assert {row.claimed_by for row in rows(sessions).values()} == {task.token}

    # The duplicate's store writes nothing; the holder's does, once.
    assert finish(sessions, ids, duplicate).done == 0
    assert finish(sessions, ids, task).done == len(ids)
    assert finish(sessions, ids, task).done == 0  # a done image is never written again
    assert take(sessions, ids, Claimant("task-c", timedelta(0), 3)) == []  # nor claimed
    assert {(r.status, r.attempts) for r in rows(sessions).values()} == {(DONE, 1)}


def test_a_redelivery_after_its_worker_died_retakes_at_once_and_counts(job):
    sessions, _, ids = job
    first = Claimant("task-a", LEASE, max_attempts=3)
    take(sessions, ids, first)
    assert not retried_before(sessions, ids, Claimant("task-b", LEASE, 3))  # not b's to take
    again = Claimant("task-a", LEASE, max_attempts=3)  # same task id, new execution
    assert retried_before(sessions, ids, again)
    assert take(sessions, ids, again) == ids
    assert {row.attempts for row in rows(sessions).values()} == {2}
    assert finish(sessions, ids, first).done == 0  # the dead execution's claim is void


def test_a_retry_after_an_infrastructure_fault_is_not_charged(job):
    sessions, _, ids = job
    first = Claimant("task-a", LEASE, max_attempts=1)
    take(sessions, ids, first)
    # A retry that failed before claiming anything: its successor refunds both executions.
    failed_early = Claimant("task-a", LEASE, max_attempts=1, refunded=(first.nonce,))
    retry = Claimant("task-a", LEASE, 1, refunded=(first.nonce, failed_early.nonce))
    assert not retried_before(sessions, ids, retry)
    assert take(sessions, ids, retry) == ids  # re-taken free, even at max_attempts
    assert {(r.status, r.attempts) for r in rows(sessions).values()} == {(PENDING, 1)}
    # ... but if that retry's worker dies, its redelivery (same message, same refund) counts.
    redelivered = Claimant("task-a", LEASE, 1, refunded=retry.refunded)
    assert take(sessions, ids, redelivered) == []
    assert {(r.status, r.error_code) for r in rows(sessions).values()} == {(ERROR, "gave_up")}


def test_an_expired_lease_is_taken_over_and_counted(job):
    sessions, _, ids = job
    take(sessions, ids[:3], Claimant("task-a", LEASE, 3))
    with sessions.begin() as session:
        session.execute(
            update(Image).where(Image.id == ids[0]).values(claimed_at=Image.claimed_at - LEASE * 2)
        )
    other = Claimant("task-b", LEASE, 3)
    assert take(sessions, ids, other) == [ids[0], *ids[3:]]
    attempts = {i: row.attempts for i, row in rows(sessions).items()}
    assert [attempts[i] for i in ids] == [2, 1, 1, 1, 1, 1]


def test_release_gives_images_back_with_or_without_their_attempt(job):
    sessions, _, ids = job
    task = Claimant("task-a", LEASE, 3)
    take(sessions, ids, task)
    assert release(sessions, ids[:2], task, refund=True) == 2
    assert release(sessions, ids[2:3], task, refund=False) == 1
    assert release(sessions, ids, Claimant("task-b", LEASE, 3), refund=True) == 0  # not b's
    state = rows(sessions)
    assert [(state[i].claimed_by, state[i].attempts) for i in ids[:3]] == [
        (None, 0),
        (None, 0),
        (None, 1),
    ]
    assert take(sessions, ids[:3], Claimant("task-b", LEASE, 3)) == ids[:3]


def test_resume_errors_resets_only_transient_error_rows(job):
    sessions, job_id, ids = job
    codes = ["gave_up", "detection_failed", "unreadable", "corrupt", "truncated"]
    with sessions.begin() as session:
        for image_id, code in zip(ids, codes, strict=False):
            session.execute(
                update(Image)
                .where(Image.id == image_id)
                .values(status=ERROR, error_code=code, error="x", attempts=3)
            )
        session.execute(update(Job).values(status=DONE))
    sent: list[list[int]] = []
    count, reset = resume_job(sessions, job_id, 10, lambda _, batch: sent.append(batch), True)
    assert (count, reset) == (4, 3) and sent == [[*ids[:3], ids[5]]]
    state = rows(sessions)
    assert [(state[i].status, state[i].attempts) for i in ids[:3]] == [(PENDING, 0)] * 3
    assert [state[i].error_code for i in ids[3:5]] == ["corrupt", "truncated"]
    with sessions() as session:
        assert session.get(Job, job_id).status != DONE


def test_concurrent_claims_and_stores_in_any_order_never_deadlock(tmp_path, postgres_url):
    """Eight threads claim and store overlapping id sets in opposite orders on PostgreSQL."""
    root = tmp_path / "many"
    root.mkdir()
    for index in range(200):
        (root / f"{index:03d}.jpg").write_bytes(b"x")
    sessions = open_database(postgres_url)
    create_job(sessions, root)
    with sessions() as session:
        ids = sorted(session.scalars(select(Image.id)))
    failures: list[BaseException] = []
    stored: list[int] = []

    def worker(number: int) -> None:
        order = ids if number % 2 else ids[::-1]
        try:
            for start in range(0, len(order), 25):
                chunk = order[start : start + 50]
                claimant = Claimant(f"task-{number}", LEASE, 3)
                taken = take(sessions, chunk, claimant)
                report = finish(sessions, taken[::-1], claimant)
                stored.append(report.done)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sum(stored) == len(ids)  # each image stored exactly once
    assert {(r.status, r.attempts) for r in rows(sessions).values()} == {(DONE, 1)}
