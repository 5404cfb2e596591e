"""Process a batch of image rows: decode, detect, align, classify, store.

The embedded `run` and the Celery task both call `process_images`; it is
safe to call again for the same ids (redelivery): images already done are
skipped, and each image's faces and final status are written in one
transaction, so a crash at any point leaves an image either untouched
(pending) or complete.

Inside a batch the stages overlap, each on threads of its own: a pool
decodes images ahead, detector workers run MTCNN on groups of images, one
thread aligns the faces found and classifies them in full classifier calls.
`process_batches` (what `run` uses) also overlaps consecutive batches: the
next batch is claimed and starts decoding and detecting while the previous
one finishes classifying and is stored.
"""

import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from classifier import GenderClassifier, Prediction
from detector import DetectorSettings, FaceDetector, align_face
from detector.loading import ImageLoadError, LoadedImage, load_image
from worker.batch import BatchReport, WorkItem
from worker.config import Settings
from worker.runtime import plan_threads
from worker.store import claim, store

_DECODE_THREADS = 2
_DECODE_AHEAD = 2  # groups decoded ahead of the detector workers (bounds memory)


class _Pools:
    """Named thread pools shared by every batch of this process, started on first use.

    Reusing the threads keeps per-thread state (malloc arenas, TensorFlow's
    thread-locals) from piling up batch after batch.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[tuple[str, int], ThreadPoolExecutor] = {}
        # A forked child has none of the parent's threads: it starts its own.
        os.register_at_fork(after_in_child=self.__init__)

    def __call__(self, name: str, workers: int) -> ThreadPoolExecutor:
        with self._lock:
            key = (name, workers)
            if key not in self._pools:
                self._pools[key] = ThreadPoolExecutor(workers, f"facegender-{name}")
            return self._pools[key]


_pools = _Pools()


@dataclass
class Models:
    """The per-process models, loaded once and reused for every batch.

    `detect_workers` groups of `detect_group` images are detected at once, on
    threads of their own (see worker.runtime.plan_threads): large enough for
    MTCNN to batch well, small enough that the classifier thread gets work
    while the detector workers go on.
    """

    detector: FaceDetector
    classifier: GenderClassifier
    detect_workers: int = 1
    detect_group: int = 16

    @classmethod
    def from_settings(cls, settings: Settings) -> "Models":
        plan = plan_threads(settings)
        detector = FaceDetector(
            DetectorSettings(max_side=settings.max_side, min_face_size=settings.min_face_size)
        )
        classifier = GenderClassifier(
            settings.model_path,
            batch_size=settings.classify_batch_size,
            backend=settings.backend,
            threads=plan.classifier_threads,
        )
        return cls(detector, classifier, plan.detect_workers, plan.detect_group)

    def load(self) -> None:
        self.detector.load()
        self.classifier.load()


def process_images(
    sessions: sessionmaker[Session],
    image_ids: Sequence[int],
    models: Models,
    max_attempts: int = 3,
) -> BatchReport:
    """Process the pending images among `image_ids` and store their results."""
    (report,) = process_batches(sessions, [image_ids], models, max_attempts)
    return report


def process_batches(
    sessions: sessionmaker[Session],
    batches: Iterable[Sequence[int]],
    models: Models,
    max_attempts: int = 3,
) -> Iterator[BatchReport]:
    """`process_images` on each batch in turn, yielding each report once it is stored.

    Each batch is claimed in one transaction and stored in one, as by
    `process_images`; batch k+1 is claimed as soon as batch k is detected, so
    its decoding and detection overlap batch k's classification and storing.
    (A crash then leaves both batches pending with one more attempt counted.)
    """
    batch_threads = _pools("batch", 2)
    previous: tuple[list[WorkItem], BatchReport, Future] | None = None
    for image_ids in batches:
        report = BatchReport()
        clock = time.perf_counter()
        work = claim(sessions, image_ids, max_attempts, report)
        report.seconds["db"] += time.perf_counter() - clock
        detected = threading.Event()
        stages = batch_threads.submit(_run_stages, work, models, report, detected)
        if previous is not None:
            yield _finish(sessions, *previous, models)
        detected.wait()
        previous = (work, report, stages)
    if previous is not None:
        yield _finish(sessions, *previous, models)


def _finish(
    sessions: sessionmaker[Session],
    work: list[WorkItem],
    report: BatchReport,
    stages: Future,
    models: Models,
) -> BatchReport:
    """Wait for a batch's stages, then store it in one transaction."""
    owners, predictions = stages.result()
    if work:
        clock = time.perf_counter()
        store(sessions, work, owners, predictions, models.classifier.version, report)
        report.seconds["db"] += time.perf_counter() - clock
    return report


def _run_stages(
    work: list[WorkItem], models: Models, report: BatchReport, detected: threading.Event
) -> tuple[list[tuple[int, int]], list[Prediction]]:
    """Decode, detect, align and classify `work`, the stages overlapped.

    Groups of images are decoded on a pool up to _DECODE_AHEAD groups ahead,
    detected by `models.detect_workers` threads, then handed in order to one
    thread that aligns their faces and classifies the crops in full classifier
    calls. Sets `detected` once every group is detected. Returns (work index,
    face index) and the prediction of every face.
    """
    started = time.perf_counter()
    workers, size = max(1, models.detect_workers), max(1, models.detect_group)
    groups = [list(range(i, min(i + size, len(work)))) for i in range(0, len(work), size)]
    decoder, detectors = _pools("decode", _DECODE_THREADS), _pools("detect", workers)
    decoding: list[list[Future]] = []
    try:
        with _Classifying(models.classifier, report) as classify:
            detecting: deque[tuple[list[int], Future]] = deque()
            for index, group in enumerate(groups):
                while len(decoding) < min(len(groups), index + workers + _DECODE_AHEAD):
                    ahead = groups[len(decoding)]
                    decoding.append([decoder.submit(_load, work[i].path) for i in ahead])
                items = [work[i] for i in group]
                task = detectors.submit(_decode_and_detect, items, decoding[index], models.detector)
                detecting.append((group, task))
                last = index == len(groups) - 1
                while detecting and (len(detecting) >= workers or last):
                    done, task = detecting.popleft()
                    for stage, seconds in task.result().items():
                        report.seconds[stage] += seconds
                    classify.add(done, [work[i] for i in done])
            detected.set()
            owners, predictions = classify.finish()
    finally:
        detected.set()  # also on failure, so that process_batches never waits forever
        for future in (f for group in decoding for f in group):
            future.cancel()  # after a failure: decoding nobody will collect
    report.seconds["pipeline"] += time.perf_counter() - started
    return owners, predictions


def _decode_and_detect(
    items: list[WorkItem], decoding: list[Future], detector: FaceDetector
) -> dict[str, float]:
    """Wait for the group's decoding, then detect in it; returns seconds per stage."""
    seconds = {"decode": _collect(items, decoding)}
    clock = time.perf_counter()
    _detect(items, detector)
    seconds["detect"] = time.perf_counter() - clock
    return seconds


def _load(path: str) -> tuple[LoadedImage | ImageLoadError, float]:
    clock = time.perf_counter()
    try:
        outcome: LoadedImage | ImageLoadError = load_image(path)
    except ImageLoadError as exc:
        outcome = exc
    return outcome, time.perf_counter() - clock


def _collect(items: list[WorkItem], futures: list[Future]) -> float:
    """Store each decoded image (or its error) on its item; returns the decoding seconds."""
    seconds = 0.0
    for item, future in zip(items, futures, strict=True):
        outcome, took = future.result()
        seconds += took
        if isinstance(outcome, ImageLoadError):
            item.error_code, item.error = outcome.reason, outcome.message
        else:
            item.pixels, item.sha256 = outcome.pixels, outcome.sha256
            item.width, item.height = outcome.width, outcome.height
    return seconds


def _detect(work: list[WorkItem], detector: FaceDetector) -> None:
    """Detect in one batch; if the batch fails, retry image by image to isolate the culprit."""
    ready = [w for w in work if w.pixels is not None]
    try:
        found = detector.detect_batch([w.pixels for w in ready])
        for item, faces in zip(ready, found, strict=True):
            item.faces = faces
    except Exception:
        for item in ready:
            try:
                item.faces = detector.detect(item.pixels)
            except Exception as exc:
                item.error_code, item.error = "detection_failed", f"face detection failed: {exc}"


class _Classifying:
    """Aligns detected faces and classifies them on one thread of its own.

    Work runs in the order it was added (one thread), so the crops gathered so
    far need no lock; they are classified as soon as they fill a classifier
    call, the rest when `finish` is called.
    """

    def __init__(self, classifier: GenderClassifier, report: BatchReport) -> None:
        self._classifier = classifier
        self._report = report
        self._thread = _pools("classify", 1)
        self._tasks: list[Future] = []
        self._crops: list[np.ndarray] = []
        self._owners: list[tuple[int, int]] = []
        self._predictions: list[Prediction] = []

    def __enter__(self) -> "_Classifying":
        return self

    def __exit__(self, *exc: object) -> None:
        for task in self._tasks:  # after a failure: drop what has not started
            task.cancel()

    def add(self, indices: list[int], items: list[WorkItem]) -> None:
        self._tasks.append(self._thread.submit(self._align, indices, items))

    def finish(self) -> tuple[list[tuple[int, int]], list[Prediction]]:
        self._tasks.append(self._thread.submit(self._classify, True))
        for task in self._tasks:
            task.result()  # re-raises what failed on the thread
        return self._owners, self._predictions

    def _align(self, indices: list[int], items: list[WorkItem]) -> None:
        clock = time.perf_counter()
        for index, item in zip(indices, items, strict=True):
            if item.pixels is not None and not item.error_code:
                for face_index, face in enumerate(item.faces):
                    self._crops.append(align_face(item.pixels, face.landmarks))
                    self._owners.append((index, face_index))
            item.pixels = None
        self._report.seconds["align"] += time.perf_counter() - clock
        self._classify(False)

    def _classify(self, last: bool) -> None:
        per_call = self._classifier.faces_per_call
        done = len(self._predictions)
        ready = len(self._crops) - done
        count = ready if last else ready - ready % per_call
        if count <= 0:
            return
        clock = time.perf_counter()
        crops = np.stack(self._crops[done : done + count])
        self._predictions += self._classifier.predict(crops)
        self._crops[done : done + count] = [None] * count  # type: ignore[list-item]
        self._report.seconds["classify"] += time.perf_counter() - clock
