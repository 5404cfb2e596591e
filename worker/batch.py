"""What flows through a batch: the work items and the report of what was done."""

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from detector import Face


@dataclass
class BatchReport:
    """What one call did, with seconds spent per stage (for progress and benchmarks).

    Stages overlap, so each stage's seconds are its busy time summed over its
    threads (decode, detect, align, classify), and "pipeline" is the wall-clock
    time from the batch's first decode to its last classification; "db" is
    claiming and storing.
    """

    done: int = 0
    errors: int = 0
    faces: int = 0
    skipped: int = 0
    reused: int = 0  # of `done`: rows copied from an identical file (worker.reuse)
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, other: "BatchReport") -> None:
        """Accumulate another report into this one (totals over a job or a retried chunk)."""
        self.done += other.done
        self.errors += other.errors
        self.faces += other.faces
        self.skipped += other.skipped
        self.reused += other.reused
        for stage, seconds in other.seconds.items():
            self.seconds[stage] += seconds


@dataclass
class WorkItem:
    """One image on its way through the stages."""

    image_id: int
    job_id: int
    path: str
    pixels: np.ndarray | None = None  # released once the faces are aligned
    scale: float = 1.0  # decoded pixels per file pixel (large photos are decoded reduced)
    sha256: str | None = None
    width: int | None = None  # the file's (upright), whatever size it was decoded at
    height: int | None = None
    error_code: str | None = None
    error: str | None = None
    faces: list[Face] = field(default_factory=list)

    @property
    def decoded(self) -> bool:
        return self.sha256 is not None
