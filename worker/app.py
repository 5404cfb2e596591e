"""The Celery app of distributed mode and all of its configuration, read from Settings.

Delivery is at-least-once and the database makes it exactly-once: a chunk's
message is acknowledged only after its rows are committed (late acks), comes
back if its worker process dies (reject on worker lost) or overruns the hard
time limit, and comes back from Redis after `visibility_timeout` if the whole
worker machine is gone. Re-running a chunk is harmless because an image is
claimed with a lease (worker.store) and its result written only by its claim.
"""

from typing import Any

from celery import Celery
from kombu import Queue

from worker.config import Settings

TASK_NAME = "facegender.process_chunk"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting of the app; raises ValueError on a combination that would misbehave."""
    if settings.task_time_limit <= 0:
        raise ValueError("FACEGENDER_TASK_TIME_LIMIT must be a positive number of seconds")
    if settings.visibility_timeout <= settings.task_time_limit:
        raise ValueError(
            f"FACEGENDER_VISIBILITY_TIMEOUT ({settings.visibility_timeout}s) must be longer than "
            f"FACEGENDER_TASK_TIME_LIMIT ({settings.task_time_limit}s), or Redis would hand a "
            "chunk that is still running to a second worker"
        )
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            # Look for the unacked chunks of dead workers often enough that they come
            # back within ~10% of the visibility timeout (kombu's default is 100 s).
            "unacked_restore_interval": max(1, min(60, settings.visibility_timeout // 10)),
            "unacked_restore_throttle": 1,
        },
        # JSON only: a message is {"job_id": int, "image_ids": [int, ...]}.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        # The database is the record; nothing is stored in a result backend.
        "result_backend": None,
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": False,
        # Ack after the rows are committed; a lost worker or a chunk killed by the
        # time limit puts its message back on the queue at once (not as a retry, which
        # would count against max_retries); a chunk that failed for good (its retries
        # are spent) is acked: its images stay pending for `facegender resume`.
        # task_acks_on_timeout/_failure exist since Celery 5.7 (pyproject pins it).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_retry_on_worker_lost": False,
        "task_acks_on_timeout": False,
        "task_acks_on_failure": True,
        "task_time_limit": settings.task_time_limit,
        "worker_prefetch_multiplier": 1,
        # Children load TensorFlow and the models before they report ready.
        "worker_proc_alive_timeout": 300.0,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_default_queue": settings.queue,
        "task_queues": [Queue(settings.queue)],
        "task_create_missing_queues": True,
    }


def configure(settings: Settings) -> Celery:
    """(Re)configure the module's app, e.g. with the broker given on the command line."""
    app.conf.update(celery_config(settings))
    return app


app = Celery("facegender", include=["worker.tasks", "worker.reclassify_task"])
app.conf.update(celery_config(Settings()))
