"""Settings read once from the environment, with defaults that work on one machine."""

import os
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """An environment value facegender cannot use; the message names the variable."""


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    """An integer setting; a value that is not one is an error naming the variable."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {number}")
    return number


def _env_float(name: str, maximum: float = float("inf")) -> float | None:
    """An optional number in [0, maximum]; unset means "the model's own value"."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {value!r}") from None
    if not 0 <= number <= maximum:
        limit = "at least 0" if maximum == float("inf") else f"within [0, {maximum:g}]"
        raise ConfigError(f"{name} must be {limit}, not {value}")
    return number


@dataclass(frozen=True)
class Settings:
    """Every knob has an env var (FACEGENDER_*); CLI flags override these per command."""

    db_url: str = field(
        default_factory=lambda: os.environ.get("FACEGENDER_DB_URL", "sqlite:///facegender.db")
    )
    broker_url: str = field(
        default_factory=lambda: os.environ.get("FACEGENDER_BROKER_URL", "redis://127.0.0.1:6379/0")
    )
    model_path: str | None = field(default_factory=lambda: os.environ.get("FACEGENDER_MODEL"))
    batch_size: int = field(default_factory=lambda: _env_int("FACEGENDER_BATCH_SIZE", 32))
    chunk_size: int = field(default_factory=lambda: _env_int("FACEGENDER_CHUNK_SIZE", 64))
    max_side: int = field(default_factory=lambda: _env_int("FACEGENDER_MAX_SIDE", 1024))
    min_face_size: int = field(default_factory=lambda: _env_int("FACEGENDER_MIN_FACE_SIZE", 20))
    max_attempts: int = field(default_factory=lambda: _env_int("FACEGENDER_MAX_ATTEMPTS", 3))
    tf_threads: int = field(default_factory=lambda: _env_int("FACEGENDER_TF_THREADS", 0, minimum=0))
    # Classifier runtime (see classifier.runtime.backends): "auto" picks the fastest
    # this machine loads (Keras in mixed precision on a GPU, LiteRT int8 on a CPU).
    backend: str = field(default_factory=lambda: os.environ.get("FACEGENDER_BACKEND", "auto"))
    # Groups of images detected at once, each on its own thread; 0: see runtime.plan_threads.
    detect_workers: int = field(
        default_factory=lambda: _env_int("FACEGENDER_DETECT_WORKERS", 0, minimum=0)
    )
    # Images per detector call; 0: 16 on a CPU, 64 on a GPU.
    detect_group: int = field(
        default_factory=lambda: _env_int("FACEGENDER_DETECT_GROUP", 0, minimum=0)
    )
    # Rows per classifier call; 0 lets the backend choose (256 on a GPU, 32 on a CPU).
    classify_batch_size: int = field(
        default_factory=lambda: _env_int("FACEGENDER_CLASSIFY_BATCH", 0, minimum=0)
    )
    # The unsure rule's thresholds (classifier.runtime.unsure); None: the model's metadata.
    unsure_below: float | None = field(
        default_factory=lambda: _env_float("FACEGENDER_UNSURE_BELOW", 1.0)
    )
    min_eye_distance: float | None = field(
        default_factory=lambda: _env_float("FACEGENDER_MIN_EYE_DISTANCE")
    )
    # Distributed mode: a chunk running longer than task_time_limit has its worker
    # process killed (and counts as a failed attempt); the broker hands an unacked
    # chunk of a dead worker to another one after visibility_timeout, which must be
    # longer than the time limit so that a running chunk is never handed out twice.
    queue: str = field(default_factory=lambda: os.environ.get("FACEGENDER_QUEUE", "facegender"))
    task_time_limit: int = field(
        default_factory=lambda: _env_int("FACEGENDER_TASK_TIME_LIMIT", 600)
    )
    visibility_timeout: int = field(
        default_factory=lambda: _env_int("FACEGENDER_VISIBILITY_TIMEOUT", 900)
    )
